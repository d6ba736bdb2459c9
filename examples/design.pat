# The examples of shared/DESIGN.md's language section.

let W = 1024

pattern swa(w = W):                 # Mistral-style window with StreamingLLM sinks
    causal & (window(w) | sink(4))

pattern s2(heads = 16):             # heterogeneous heads: each head a different stride phase
    causal & (window(256) | columns(16, phase = h % 16))

pattern video:                      # 3-D neighborhood attention over 16 frames of 48x48
    grid(16, 48, 48)
    neighborhood((3, 11, 11), dilation = (1, 2, 2))

pattern mixed:                      # different patterns on different heads
    heads 0..7:  causal & window(512)
    heads 8..15: causal & (window(256) | pow2(block = 128) | sink(128))
