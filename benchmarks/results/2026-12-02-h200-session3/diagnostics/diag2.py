import threading, sys
import torch
import patternc
rt = sys.modules["patternc.runtime.attention"]

def where(ptr):
    for seg in torch.cuda.memory_snapshot():
        a = seg["address"]
        if a <= ptr < a + seg["total_size"]:
            addr = a
            for b in seg["blocks"]:
                if addr == ptr:
                    return f"pool={seg.get('segment_pool_id')} stream={seg.get('stream')} block={b['state']} size={b['size']}"
                addr += b["size"]
            return f"pool={seg.get('segment_pool_id')} inside a block"
    return "no segment"

def wrap(name, fn):
    def inner(*a, **kw):
        r = fn(*a, **kw)
        outs = r if isinstance(r, tuple) else (r,)
        print(f"[{name}] thread={'main' if threading.current_thread() is threading.main_thread() else 'other'} "
              f"stream={torch.cuda.current_stream().cuda_stream} capturing={torch.cuda.is_current_stream_capturing()}", flush=True)
        for o in outs:
            if o is not None:
                print(f"    {hex(o.data_ptr())} {tuple(o.shape)} {where(o.data_ptr())}", flush=True)
        return r
    return inner
rt.backward, rt.forward = wrap("bwd", rt.backward), wrap("fwd", rt.forward)
variant = sys.argv[1] if len(sys.argv) > 1 else "plain"
print("variant", variant, flush=True)
if variant == "nothread":
    rt._outside_graph_pools = lambda device, build, *a: build(*a)
gen = torch.Generator("cuda").manual_seed(4)
q, k, v = (torch.randn(1, 4, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
pattern = patternc.compile("causal & (window(200) | sink(16))")
def step(q, k, v):
    return patternc.attention(q, k, v, pattern).float().square().sum()
if variant == "eagerfirst":
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    torch.autograd.grad(step(*leaves), leaves)
    print("eager first call done", flush=True)
compiled = torch.compile(step, mode="reduce-overhead")
for i in range(4):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    try:
        got = torch.autograd.grad(compiled(*leaves), leaves)
        print("step", i, "ok", flush=True)
    except Exception as e:
        msg = str(e)
        print("step", i, "FAILED:", msg[:400], flush=True)
        import re
        for p in re.findall(r"\d{12,}", msg)[:8]:
            print("   failing", hex(int(p)), where(int(p)), flush=True)
        break
