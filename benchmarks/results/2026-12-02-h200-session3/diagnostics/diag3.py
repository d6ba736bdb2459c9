import sys
import torch
import torch._inductor.config as icfg
variant = sys.argv[1]
print("variant", variant, flush=True)
if variant == "noasserts":
    icfg.triton.slow_path_cudagraph_asserts = False
import patternc

@torch.library.custom_op("diag::attn", mutates_args=())
def toy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, -1)
    return (torch.exp(s - lse[..., None]) @ v.float()).to(q.dtype), lse

@toy.register_fake
def _(q, k, v):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)

@torch.library.custom_op("diag::attn_bwd", mutates_args=())
def toy_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qd, kd, vd = (x.detach().float().requires_grad_() for x in (q, k, v))
    with torch.enable_grad():
        s = (qd @ kd.transpose(-1, -2)) * q.shape[-1] ** -0.5
        o = torch.softmax(s, -1) @ vd
        g = torch.autograd.grad(o, (qd, kd, vd), do.float())
    return tuple(x.to(q.dtype) for x in g)

@toy_bwd.register_fake
def _(do, q, k, v, out, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

def setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)

def backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return toy_bwd(dout, q, k, v, out, lse)

toy.register_autograd(backward, setup_context=setup)

gen = torch.Generator("cuda").manual_seed(4)
q, k, v = (torch.randn(1, 4, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
pattern = patternc.compile("causal & (window(200) | sink(16))")
if variant == "toy":
    attend = lambda q, k, v: toy(q, k, v)[0]
elif variant == "sdpa":
    attend = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)
else:
    attend = lambda q, k, v: patternc.attention(q, k, v, pattern)
def step(q, k, v):
    return attend(q, k, v).float().square().sum()
leaves = [x.detach().requires_grad_() for x in (q, k, v)]
want = torch.autograd.grad(step(*leaves), leaves)
compiled = torch.compile(step, mode="reduce-overhead")
for i in range(5):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    try:
        got = [g.clone() for g in torch.autograd.grad(compiled(*leaves), leaves)]
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, want))
        print("step", i, "ok, rel err vs eager", f"{err:.2e}", flush=True)
    except Exception as e:
        print("step", i, "FAILED:", str(e)[:300], flush=True)
        break
