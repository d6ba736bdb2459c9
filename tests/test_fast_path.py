"""The cached call's replayed launch (runtime/launcher.py): after a problem's first call, later
calls go to the compiled kernel's launcher with the recorded arguments, and only q, k, v, the
output, the LSE and the scale put in. Each test checks that the replay gives what launch()
gives, and that every call the recording doesn't fit (other strides, a misaligned view, a copy
made by launch(), another current device, a launch hook, packed documents, routing, wrong
inputs) takes launch() again or fails as before.

CPU: Triton's interpreter stands in for the compiled kernel (`replay` fixture): the recording
launches through the interpreter, and the stand-in `CompiledKernel.run` passes the replayed
positional arguments to the interpreter, so a slot left frozen or put in the wrong place shows
as a wrong result. On a GPU, benchmarks/overhead.py makes the same checks with real launches.
"""
from __future__ import annotations

import sys

import pytest
import torch

from reference import assert_close, reference_grads

import patternc
from patternc.errors import PatternError
from patternc.runtime import launcher

rt = sys.modules["patternc.runtime.attention"]
SMALL = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


@pytest.fixture
def replay(interpret, monkeypatch):
    """Replays on the CPU; returns the counts of recorded and replayed launches and the current
    device the stand-in driver reports (set `state["device"]` to move it)."""
    state = {"recorded": 0, "replayed": 0, "device": 0}

    class Interpreted:  # a CompiledKernel whose launcher runs the kernel in the interpreter
        function, packed_metadata = object(), ()

        def __init__(self, kernel, options):
            self.kernel, self.options = kernel, options

        def run(self, gx, gy, gz, stream, function, metadata, launch_metadata, enter, leave, *args):
            assert function is self.function and (launch_metadata, enter, leave) == (None, None, None)
            state["replayed"] += 1
            self.kernel[(gx, gy, gz)](*args, **self.options)

    def compiled(kernel, grid, kwargs):
        kernel[grid](**kwargs)
        state["recorded"] += 1
        return Interpreted(kernel, {name: kwargs[name] for name in launcher._OPTIONS if name in kwargs})

    monkeypatch.setattr(launcher, "_compiled", compiled)
    monkeypatch.setattr(launcher, "_target", lambda q: (0, lambda: state["device"], lambda device: 0))
    monkeypatch.setattr(rt, "_fast", {})
    monkeypatch.setattr(rt, "_fast_backward", {})
    return state


def inputs(B=1, H=2, Hkv=1, M=40, N=40, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, M, D, generator=g, dtype=dtype),
            *(torch.randn(B, Hkv, N, D, generator=g, dtype=dtype) for _ in range(2)))


def launched(pattern, q, k, v, config=SMALL, **kwargs):
    """What the generated module's launch() gives for these inputs (no replay involved)."""
    rt_pattern = rt.as_pattern(pattern)
    for key, (user, module, layout) in rt._ready.items():
        if user is pattern and key[1] == q.shape and key[-2] == rt.config_key(config):
            lse = torch.empty(q.shape[:3], dtype=torch.float32) if kwargs.get("return_lse") else None
            out, lse = module.launch(q, k, v, layout, scale=kwargs.get("scale"), lse=lse)
            return (out, lse) if kwargs.get("return_lse") else out
    raise AssertionError(f"{rt_pattern} is not cached for {tuple(q.shape)}")


def fresh_like(*tensors, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in tensors]


@pytest.mark.parametrize("memory", ["pointers", "tma"])
@pytest.mark.parametrize("text", ["causal & window(9)", "causal & (window(5) | sink(3))", "full"])
def test_replays_equal_launch_on_new_data(replay, text, memory):
    pattern = patternc.compile(text)
    config = dict(SMALL, memory=memory)
    q, k, v = inputs(H=4, Hkv=2, M=40, N=56)
    first = patternc.attention(q, k, v, pattern, config=config)
    assert replay == {"recorded": 1, "replayed": 0, "device": 0}
    again = patternc.attention(q, k, v, pattern, config=config)
    assert replay["replayed"] == 1 and torch.equal(again, first)
    for seed in (1, 2):
        q2, k2, v2 = fresh_like(q, k, v, seed=seed)
        got = patternc.attention(q2, k2, v2, pattern, config=config)
        assert torch.equal(got, launched(pattern, q2, k2, v2, config)), f"seed {seed}"
    assert replay["replayed"] == 3 and replay["recorded"] == 1
    ref = patternc.reference_attention(q2.double(), k2.double(), v2.double(), pattern)
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-4)


def test_lse_and_scale_are_put_in_per_call(replay):
    pattern = patternc.compile("causal & window(12)")
    q, k, v = inputs()
    patternc.attention(q, k, v, pattern, config=SMALL, return_lse=True)
    for scale in (None, 0.3, 2, 0.3):  # an int scale is replayed too
        out, lse = patternc.attention(q, k, v, pattern, config=SMALL, return_lse=True, scale=scale)
        want, want_lse = launched(pattern, q, k, v, return_lse=True, scale=scale)
        assert torch.equal(out, want) and torch.equal(lse, want_lse), scale
    assert replay["replayed"] == 4
    out = patternc.attention(q, k, v, pattern, config=SMALL, scale=torch.tensor(0.3).item())
    assert torch.equal(out, launched(pattern, q, k, v, scale=0.3))
    # a scale of another type (here numpy's float64) takes launch(), with the same result
    np = pytest.importorskip("numpy")
    before = replay["replayed"]
    out = patternc.attention(q, k, v, pattern, config=SMALL, scale=np.float64(0.3))
    assert replay["replayed"] == before and torch.equal(out, launched(pattern, q, k, v, scale=0.3))


def test_other_strides_of_the_same_shape(replay):
    """A view with the same shape and other strides is its own recording: right either way."""
    pattern = patternc.compile("causal & window(7)")
    q, k, v = inputs(H=2, Hkv=2)
    contiguous = patternc.attention(q, k, v, pattern, config=SMALL)
    wide = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, M, H, D] memory seen as [B, H, M, D]
    assert wide.shape == q.shape and wide.stride() != q.stride()
    for _ in range(2):
        assert torch.equal(patternc.attention(wide, k, v, pattern, config=SMALL), contiguous)
    assert replay["recorded"] == 2 and replay["replayed"] == 1
    assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), contiguous)
    assert replay["replayed"] == 2
    # the last dimension strided: launch() copies q, so that recording is never replayed
    strided = torch.randn(q.shape[:3] + (2 * q.shape[3],))[..., ::2]
    assert strided.shape == q.shape and strided.stride(-1) == 2
    for _ in range(2):
        assert torch.equal(patternc.attention(strided, k, v, pattern, config=SMALL),
                           patternc.attention(strided.contiguous(), k, v, pattern, config=SMALL))
    assert isinstance(rt._fast[next(key for key in rt._fast if key[4] == strided.stride())], launcher.Never)


def test_misaligned_views_take_launch(replay):
    """Triton specialized the kernel on 16-byte aligned pointers: a view 2 bytes off takes launch()."""
    pattern = patternc.compile("causal & window(9)")
    q, k, v = inputs(dtype=torch.float16)
    patternc.attention(q, k, v, pattern, config=SMALL)
    shifted = torch.randn(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape)
    assert shifted.data_ptr() % 16 and shifted.stride() == q.stride()
    replayed = replay["replayed"]
    got = patternc.attention(shifted, k, v, pattern, config=SMALL)
    assert replay["replayed"] == replayed
    assert torch.equal(got, patternc.attention(shifted.clone(), k, v, pattern, config=SMALL))
    assert replay["replayed"] == replayed + 1


def test_another_device_or_a_launch_hook_takes_launch(replay, monkeypatch):
    from triton import knobs

    pattern = patternc.compile("causal")
    q, k, v = inputs()
    want = patternc.attention(q, k, v, pattern, config=SMALL)
    replay["device"] = 1  # the current device is no longer the one the kernel was loaded on
    assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), want) and replay["replayed"] == 0
    replay["device"] = 0
    hook = knobs.runtime.launch_enter_hook
    if hasattr(hook, "add"):  # Triton >= 3.5: a chain of hooks
        seen = []
        hook.add(seen.append)
        try:
            assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), want)
        finally:
            hook.remove(seen.append)
    else:
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
        assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), want)
        monkeypatch.undo()
    assert replay["replayed"] == 0
    assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), want) and replay["replayed"] == 1


def test_wrong_inputs_are_still_refused_after_caching(replay):
    pattern = patternc.compile("causal & window(9)")
    q, k, v = inputs(H=2, Hkv=1)
    patternc.attention(q, k, v, pattern, config=SMALL)
    patternc.attention(q, k, v, pattern, config=SMALL)
    with pytest.raises(PatternError, match="share one dtype"):
        patternc.attention(q, k.half(), v, pattern, config=SMALL)
    with pytest.raises(PatternError, match="shapes don't match"):
        patternc.attention(q, k, v[:, :, :-1], pattern, config=SMALL)
    with pytest.raises(PatternError, match="must share head_dim"):
        patternc.attention(q, k[..., :8], v, pattern, config=SMALL)
    with pytest.raises(PatternError, match="4-D tensor"):
        patternc.attention(q, k[0], v, pattern, config=SMALL)
    with pytest.raises(PatternError, match="one device"):
        patternc.attention(q, k.to("meta"), v, pattern, config=SMALL)
    with pytest.raises(PatternError, match="4-D tensor"):
        patternc.attention(q, k.numpy(), v, pattern, config=SMALL)


def test_documents_are_checked_on_every_call(replay):
    pattern = patternc.compile("causal & window(5)")
    q, k, v = inputs(M=32, N=32)
    docs = torch.tensor([0, 10, 32], dtype=torch.int32)
    first = patternc.attention(q, k, v, pattern, config=SMALL, documents=docs)
    assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL, documents=docs), first)
    for bad in ([0, 10, 31], [1, 10, 32], [0, 20, 10, 32]):
        with pytest.raises(PatternError):
            patternc.attention(q, k, v, pattern, config=SMALL, documents=torch.tensor(bad, dtype=torch.int32))
    other = torch.tensor([0, 20, 32], dtype=torch.int32)
    want = patternc.reference_attention(q.double(), k.double(), v.double(), pattern, documents=other)
    torch.testing.assert_close(patternc.attention(q, k, v, pattern, config=SMALL, documents=other).double(), want,
                               atol=1e-4, rtol=1e-4)
    assert replay["recorded"] == 0  # packed documents build their tables per call: never recorded


def test_routed_patterns_choose_on_every_call(replay):
    pattern = patternc.compile("causal & topk(2, block=16)")
    q, k, v = inputs(H=2, Hkv=2, M=64, N=64)
    patternc.attention(q, k, v, pattern, config=SMALL)
    q2, k2, v2 = fresh_like(q, k, v, seed=5)
    got = patternc.attention(q2, k2, v2, pattern, config=SMALL)
    want = patternc.reference_attention(q2.double(), k2.double(), v2.double(), pattern)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    assert replay["recorded"] == 0 and replay["replayed"] == 0


def test_pattern_objects_and_text_keep_their_own_entries(replay):
    q, k, v = inputs()
    a, b = patternc.compile("causal & window(3)"), patternc.compile("causal & window(30)")
    out_a = patternc.attention(q, k, v, a, config=SMALL)
    out_b = patternc.attention(q, k, v, b, config=SMALL)
    assert not torch.equal(out_a, out_b)
    assert torch.equal(patternc.attention(q, k, v, a, config=SMALL), out_a)
    assert torch.equal(patternc.attention(q, k, v, b, config=SMALL), out_b)
    assert torch.equal(patternc.attention(q, k, v, "causal & window(3)", config=SMALL), out_a)
    assert torch.equal(patternc.attention(q, k, v, "causal & window(3)", config=SMALL), out_a)
    assert replay["recorded"] == 3 and replay["replayed"] == 3


def test_without_a_compiled_kernel_nothing_is_replayed(interpret, monkeypatch):
    """The interpreter itself returns no CompiledKernel: calls keep going through launch()."""
    monkeypatch.setattr(launcher, "_target", lambda q: (0, lambda: 0, lambda device: 0))
    monkeypatch.setattr(rt, "_fast", {})
    pattern = patternc.compile("causal & window(9)")
    q, k, v = inputs()
    first = patternc.attention(q, k, v, pattern, config=SMALL)
    assert all(isinstance(fast, launcher.Never) for fast in rt._fast.values()) and rt._fast
    assert torch.equal(patternc.attention(q, k, v, pattern, config=SMALL), first)


@pytest.mark.parametrize("memory", ["pointers", "tma"])
def test_the_gpu_benchmark_runs_its_checks_on_replays(replay, memory):
    """benchmarks/overhead.py's row (checks, loops, bare launch) on replays through the interpreter;
    only the GPU timing of the kernel is missing here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "overhead.py"
    spec = importlib.util.spec_from_file_location("overhead_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    q, k, v = inputs(H=1, Hkv=1, M=32, N=32)
    row = bench.measure("window", patternc.compile("causal & window(9)"), memory, q, k, v, 2, 1, lambda: None, torch)
    assert "error" not in row, row.get("error")
    assert row["check"]["ok"], row["check"]
    assert row["replayed"] and row["bare_us"]["best"] > 0 and row["kernel_us"] is None
    assert (row["check"]["misaligned_view_equal"] is None) == (memory == "tma")
    assert bench.summary_line(row).startswith("window/" + memory)


def grads_of(pattern, q, k, v, dout, config, dlse=None):
    """(dq, dk, dv) through patternc.attention's autograd path (the backward replayed where recorded)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = patternc.attention(q, k, v, pattern, config=config, return_lse=True)
    loss = (out * dout).sum() + (0 if dlse is None else (torch.where(torch.isinf(lse), 0, lse) * dlse).sum())
    return torch.autograd.grad(loss, (q, k, v))


@pytest.mark.parametrize("memory", ["pointers", "tma"])
def test_backward_replays_equal_launch_backward(replay, memory):
    """The three backward kernels replayed with a call's tensors, dQ/dK/dV and the row
    statistics allocated anew: the same gradients as the first (recorded) call, on new data too."""
    pattern = patternc.compile("causal & (window(9) | sink(2))")
    config = dict(SMALL, memory=memory)
    q, k, v = inputs(H=4, Hkv=2, M=40, N=56)
    dout = fresh_like(q, seed=5)[0]
    first = grads_of(pattern, q, k, v, dout, config)
    recorded = replay["recorded"]
    assert recorded == 4  # the forward and the three backward kernels
    again = grads_of(pattern, q, k, v, dout, config)
    assert replay["replayed"] == 4 and replay["recorded"] == recorded  # forward and backward: 1 + 3
    assert all(torch.equal(a, b) for a, b in zip(again, first))
    q2, k2, v2, dout2 = fresh_like(q, k, v, dout, seed=7)
    got = grads_of(pattern, q2, k2, v2, dout2, config)
    assert replay["replayed"] == 8
    for g, want, name in zip(got, reference_grads(q2, k2, v2, pattern, dout2), "qkv"):
        assert_close(g, want, 1e-4, f"d{name}")


@pytest.mark.parametrize("memory", ["pointers", "tma"])
def test_projection_views_are_addressed_as_they_are(replay, memory):
    """q, k, v sliced from one projection ([B, S, 3, H, D] seen as three [B, H, S, D]: a model's
    usual layout) are read through their own strides, by pointers or TMA descriptors: no copy, so
    forward and backward launches are recorded and replayed, and the gradients are right."""
    pattern = patternc.compile("causal & (window(9) | sink(2))")
    config = dict(SMALL, memory=memory)
    for seed in (1, 2, 3):
        g = torch.Generator().manual_seed(seed)
        qkv = torch.randn(1, 40, 3, 2, 16, generator=g).requires_grad_()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        assert not q.is_contiguous() and q.stride(-1) == 1
        out = patternc.attention(q, k, v, pattern, config=config)
        dout = torch.randn(out.shape, generator=g)
        out.backward(dout)
        dq, dk, dv = qkv.grad.permute(2, 0, 3, 1, 4).unbind(0)
        for got, want, name in zip((dq, dk, dv), reference_grads(q, k, v, pattern, dout), "qkv"):
            assert_close(got, want, 1e-4, f"seed {seed} d{name}")
    assert replay["recorded"] == 4 and replay["replayed"] == 8  # calls 2 and 3: forward 1 + backward 3 each
    assert not any(isinstance(fast, launcher.Never) for fast in (*rt._fast.values(), *rt._fast_backward.values()))


def test_backward_replay_follows_the_lse_gradient_and_scale(replay):
    """A call with the LSE's gradient is its own recording (another kernel specialization); the
    scale is put in per call."""
    pattern = patternc.compile("causal & window(12)")
    q, k, v = inputs()
    dout, dlse = fresh_like(q, q[..., 0], seed=3)
    for _ in range(2):
        got = grads_of(pattern, q, k, v, dout, SMALL, dlse=dlse)
    for g, want, name in zip(got, reference_grads(q, k, v, pattern, dout, dlse=dlse), "qkv"):
        assert_close(g, want, 1e-4, f"d{name} with dlse")
    for scale in (None, 0.3):
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        for _ in range(2):
            grads = torch.autograd.grad(patternc.attention(qg, kg, vg, pattern, config=SMALL, scale=scale), (qg, kg, vg),
                                        dout)
        for g, want, name in zip(grads, reference_grads(q, k, v, pattern, dout, scale=scale), "qkv"):
            assert_close(g, want, 1e-4, f"d{name} scale {scale}")


def test_backward_of_an_expanded_gradient_is_not_replayed(replay):
    """`out.sum().backward()` hands the backward a stride-0 gradient: launch_backward copies it,
    so that recording is never replayed, and every call is right."""
    pattern = patternc.compile("causal & window(5)")
    q, k, v = (x.requires_grad_() for x in inputs(H=2, Hkv=2, M=24, N=24))
    for _ in range(2):
        q.grad = k.grad = v.grad = None
        patternc.attention(q, k, v, pattern, config=SMALL).sum().backward()
    assert any(isinstance(fast, launcher.Never) for fast in rt._fast_backward.values())
    ones = torch.ones(q.shape, dtype=q.dtype)
    for g, want, name in zip((q.grad, k.grad, v.grad), reference_grads(q, k, v, pattern, ones), "qkv"):
        assert_close(g, want, 1e-4, f"d{name}")
