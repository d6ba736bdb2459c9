"""Where generated kernels live: an in-memory table over an on-disk cache of modules.

The disk cache is `$PATTERNC_CACHE_DIR` or the user cache dir (platformdirs). A module's file
name is the hash of its source plus the Triton version and device capability, so anything
that changes the code or its compilation gets a new entry; files are written atomically
(temporary file + rename), so concurrent processes never see half a module.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

_modules: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("PATTERNC_CACHE_DIR")
    if root is None:
        import platformdirs

        root = platformdirs.user_cache_dir("patternc")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def source_key(source: str, device_tag: str) -> str:
    import triton

    h = hashlib.sha256()
    for part in (source, triton.__version__, device_tag, os.environ.get("TRITON_INTERPRET", "")):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def load_module(source: str, device_tag: str):
    """Import the generated module (from memory, else disk, else written now)."""
    key = source_key(source, device_tag)
    if key in _modules:
        return _modules[key]
    path = cache_dir() / f"pc_{key}.py"
    try:  # bytes: a corrupt entry (truncated, not UTF-8) is just different, and rewritten
        current = path.read_bytes()
    except OSError:
        current = None
    if current != source.encode():
        atomic_write(path, source)
    name = f"patternc_kernels.pc_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # triton resolves globals through the module
    spec.loader.exec_module(module)
    _modules[key] = module
    return module
