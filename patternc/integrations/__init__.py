"""Bridges to other libraries, each imported on its own (`patternc.integrations.transformers`)
so that `import patternc` pulls in none of them."""
