"""The cached call's launch: a generated kernel run again without Triton's per-call dispatch.

`kernel[grid](...)` costs tens of microseconds on the host per call: Triton binds the keyword
arguments, specializes each one (dtypes, 16-byte alignment of pointers, integers equal to 1 or
divisible by 16), builds its cache key and looks the compiled kernel up. For a problem that ran
once, all of that is known. `record` runs the generated module's `launch()` once as it is, except
that the kernel call is seen: it keeps the compiled kernel Triton returned, the grid and every
argument in the kernel's parameter order. `FastLaunch` then calls the compiled kernel's launcher
directly (`CompiledKernel.run`, the call Triton itself makes, in Triton 3.4 to 3.9), with only
the arguments that change from call to call put in:

- the tensors q, k, v and the output (or their TMA descriptors, rebased), the LSE when one is
  written, and `qk_scale` from the call's scale;
- everything else (strides, lengths, the layout's tables, constexprs, the grid) depends only on
  what the caller's cache key holds: the shapes, strides, dtypes and devices of q, k, v, the
  pattern, the config and whether the LSE is written.

The backward (`record_backward`, `FastBackward`) is replayed the same way: `launch_backward`'s
three kernels (row statistics, dK/dV, dQ) recorded in one call, then launched in order with the
call's q, k, v, output, LSE, output gradient (and LSE gradient), and dQ, dK, dV and the row
statistics allocated per call; the caller's key adds the strides of all of them.

A call is launched this way only when everything the compiled kernel was specialized on still
holds (checked per call, each a few hundred nanoseconds): q, k, v are 16-byte aligned as when
recorded, the current CUDA device is the one the kernel was loaded on, and no launch hook
(profilers) or pre-run hook is set. Otherwise `FastLaunch` returns None and the caller runs
`launch()` as before. Problems with packed documents or routing are never recorded: their
launches compute per-call tables. So is any launch whose arguments don't fit the description
above (a contiguous copy of an input, a float other than the scale, an unknown descriptor).
"""
from __future__ import annotations

import types

LOG2E = 1.4426950408889634  # as the generated modules define it (checked when recording)
# the call's tensors by parameter name, and their TMA descriptors, for each direction; the
# backward's dQ, dK, dV and its row statistics (Delta, Lse2) are allocated per call like the output
_FORWARD = ({"Q": 0, "K": 1, "V": 2, "Out": 3, "Lse": 4}, {"desc_q": 0, "desc_k": 1, "desc_v": 2, "desc_o": 3})
_BACKWARD = ({"Q": 0, "K": 1, "V": 2, "Out": 3, "DO": 4, "Lse": 5, "DLse": 6, "DQ": 7, "DK": 8, "DV": 9, "Delta": 10,
              "Lse2": 11},
             {"desc_q": 0, "desc_k": 1, "desc_v": 2, "desc_do": 4, "desc_dq": 7, "desc_dk": 8, "desc_dv": 9})
_SCALES = {"qk_scale": 0, "sm_scale": 1}  # per call: (scale * LOG2E, scale)
_OPTIONS = {"num_warps", "num_stages"}  # keywords of the launch that are compile options, not parameters


def _compiled(kernel, grid, kwargs):
    """Launch `kernel` through Triton (compiling it the first time) and return what Triton
    returns: the `CompiledKernel` on a GPU, None in the interpreter. Tests replace this."""
    return kernel[grid](**kwargs)


def _target(q):
    """(device index, current_device(), current_stream(device)) for a fast launch on q's device,
    or None where there is none (not CUDA, or q's device is not the current one). Tests replace this."""
    if q.device.type != "cuda":
        return None
    import torch
    from triton.runtime import driver

    active = driver.active
    index = active.get_current_device()
    if q.device.index != index:
        return None
    current = active.get_current_device
    if current is torch.cuda.current_device:  # Triton asks torch: the same answer without its lazy-init check
        current = getattr(torch._C, "_cuda_getDevice", current)
    return index, current, active.get_current_stream


def _hooks():
    """Triton's launch hooks as read per call: (runtime knobs, the hook-chain type or None)."""
    from triton import knobs

    try:  # Triton >= 3.5: hooks are chains, idle when empty
        from triton.knobs import HookChain
    except ImportError:  # Triton 3.4: a hook is a callable or None
        HookChain = None
    return knobs.runtime, HookChain


def _descriptor_base_only() -> bool:
    """Whether this Triton's launcher reads nothing of a tensor descriptor's base but its
    data_ptr() (3.4 to 3.9, read in their launchers): then a rebased descriptor can hold q
    itself instead of a new view of it, which saves a view per tensor and call."""
    import triton

    try:
        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return (3, 4) <= (major, minor) <= (3, 9)


class _Kernel:
    """One recorded kernel call: its compiled launcher, grid and arguments in parameter order,
    and where a call's own tensors, descriptors and scales go."""

    __slots__ = ("args", "descriptors", "function", "grid", "metadata", "run", "scales", "slots")

    def launch(self, stream, tensors, scales):
        args = self.args.copy()
        for slot, which in self.slots:
            args[slot] = tensors[which]
        for slot, which, cls, fields, view in self.descriptors:
            desc = object.__new__(cls)
            desc.__dict__.update(fields)
            desc.base = tensors[which] if view is None else tensors[which].view(view)
            args[slot] = desc
        for slot, which in self.scales:
            args[slot] = scales[which]
        grid = self.grid
        self.run(grid[0], grid[1], grid[2], stream, self.function, self.metadata, None, None, None, *args)


class _Replay:
    """What every replay checks per call before it launches: no launch hook (profilers) or
    pre-run hook is set, and the current CUDA device is the one its kernels were loaded on."""

    __slots__ = ("chain", "current_device", "current_stream", "default_scale", "device", "kernels", "knobs",
                 "pattern", "pre_run", "torch")

    def stream(self):
        """The current stream to launch on, or None where the recording doesn't hold."""
        knobs, chain = self.knobs, self.chain
        enter, leave = knobs.launch_enter_hook, knobs.launch_exit_hook
        if ((enter is not None and (chain is None or type(enter) is not chain or enter.calls))
                or (leave is not None and (chain is None or type(leave) is not chain or leave.calls))
                or any(self.pre_run) or self.current_device() != self.device):
            return None
        return self.current_stream(self.device)

    def scales(self, scale):
        """(qk_scale, sm_scale) for the call's scale, or None for a scale Triton must convert."""
        if scale is None:
            return self.default_scale
        if type(scale) is float or type(scale) is int:
            return scale * LOG2E, scale
        return None


class FastLaunch(_Replay):
    """One recorded forward launch of one problem, replayed with a call's tensors (see the module)."""

    __slots__ = ("lse", "lse_shape")

    def __call__(self, q, k, v, scale, return_lse):
        """(out, lse or None), or None when the recorded launch doesn't fit this call."""
        if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:  # Triton specialized on 16-byte alignment
            return None
        stream, scales = self.stream(), self.scales(scale)
        if stream is None or scales is None or return_lse != self.lse:
            return None
        torch = self.torch
        out = torch.empty_like(q)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=q.device) if return_lse else None
        self.kernels[0].launch(stream, (q, k, v, out, lse), scales)
        return out, lse


class FastBackward(_Replay):
    """One recorded `launch_backward` of one problem (its three kernels), replayed with a call's
    tensors: dQ, dK, dV and the row statistics allocated per call."""

    __slots__ = ("dlse", "rows_shape")

    def __call__(self, q, k, v, out, lse, do, dlse, scale):
        """(dq, dk, dv), or None when the recorded launches don't fit this call."""
        aligned = q.data_ptr() | k.data_ptr() | v.data_ptr() | out.data_ptr() | do.data_ptr() | lse.data_ptr()
        if dlse is not None:
            aligned |= dlse.data_ptr()
        if aligned & 15 or (dlse is not None) != self.dlse:
            return None
        stream, scales = self.stream(), self.scales(scale)
        if stream is None or scales is None:
            return None
        torch = self.torch
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta, lse2 = torch.empty(self.rows_shape, dtype=torch.float32, device=q.device)
        tensors = (q, k, v, out, do, lse, lse if dlse is None else dlse, dq, dk, dv, delta, lse2)
        for kernel in self.kernels:
            kernel.launch(stream, tensors, scales)
        return dq, dk, dv


def record(module, layout, q, k, v, scale, lse, pattern):
    """Run `module.launch(q, k, v, layout, scale=scale, lse=lse)` once, as it is, and return
    (out, lse, what to keep for the problem's later calls): a FastLaunch, `Never(pattern)` where
    this launch can't be replayed, or None where nothing was recorded (not on the current CUDA
    device: a later call may be)."""
    target = _target(q)
    if target is None or getattr(module, "attention_fwd", None) is None or getattr(module, "LOG2E", None) != LOG2E:
        out, lse = module.launch(q, k, v, layout, scale=scale, lse=lse)
        return out, lse, None if target is None else Never(pattern)
    seen = []
    out, lse = launch_with(module, _seen(module, ["attention_fwd"], seen))(q, k, v, layout, scale=scale, lse=lse)
    fast = _replay(FastLaunch(), seen, ["attention_fwd"], _FORWARD, (q, k, v, out, lse), target, pattern)
    if fast is not None:
        fast.lse, fast.lse_shape = lse is not None, tuple(q.shape[:3])
    return out, lse, fast or Never(pattern)


def record_backward(module, layout, q, k, v, out, lse, do, dlse, scale, pattern):
    """`module.launch_backward(q, k, v, out, lse, do, layout, scale=scale, dlse=dlse)` once, as
    it is: ((dq, dk, dv), a FastBackward for later calls, `Never(pattern)`, or None), as `record`."""
    kernels = ["attention_bwd_rows", "attention_bwd_dkdv", "attention_bwd_dq"]
    target = _target(q)
    if target is None or any(getattr(module, name, None) is None for name in kernels):
        grads = module.launch_backward(q, k, v, out, lse, do, layout, scale=scale, dlse=dlse)
        return grads, None if target is None else Never(pattern)
    seen = []
    grads = launch_with(module, _seen(module, kernels, seen), "launch_backward")(q, k, v, out, lse, do, layout,
                                                                                  scale=scale, dlse=dlse)
    rows = seen[0][3] if seen else {}
    delta, lse2 = rows.get("Delta"), rows.get("Lse2")  # the row statistics, [B x H, M] each, made per call
    rows_shape = (q.shape[0] * q.shape[1], q.shape[2])
    if getattr(delta, "shape", None) != rows_shape or getattr(lse2, "shape", None) != rows_shape:
        return grads, Never(pattern)
    tensors = (q, k, v, out, do, lse, lse if dlse is None else dlse, *grads, delta, lse2)
    fast = _replay(FastBackward(), seen, kernels, _BACKWARD, tensors, target, pattern)
    if fast is not None:
        fast.dlse, fast.rows_shape = dlse is not None, (2, *rows_shape)
    return grads, fast or Never(pattern)


def _seen(module, names, seen):
    """Stand-ins for the kernels `names` of `module` that launch them through Triton as they are
    and append (name, kernel, grid, kwargs, compiled) to `seen`."""
    class Seen:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(**kwargs):
                kernel = getattr(module, self.name)
                compiled = _compiled(kernel, grid, kwargs)
                seen.append((self.name, kernel, grid, kwargs, compiled))
                return compiled
            return launch

    return {name: Seen(name) for name in names}


def launch_with(module, kernels: dict, function: str = "launch"):
    """`module.<function>` with `kernels` (name -> object) in place of the module's own (the
    module itself unchanged: the function gets globals of its own)."""
    launch = getattr(module, function)
    copy = types.FunctionType(launch.__code__, {**vars(module), **kernels}, launch.__name__, launch.__defaults__,
                              launch.__closure__)
    copy.__kwdefaults__ = launch.__kwdefaults__
    return copy


def _replay(fast, seen, kernels, names, tensors, target, pattern):
    """`fast` (a _Replay) set up from the seen launches, one of each of `kernels` in order, with
    `tensors` the call's (by the index `names` gives each parameter), or None where they don't fit
    the module's rules."""
    import torch

    if [name for name, *_ in seen] != kernels or any(t.data_ptr() % 16 for t in tensors if t is not None):
        return None  # another sequence of launches; or inputs specialized as unaligned: left to Triton
    fast.kernels = []
    for _, kernel, grid, kwargs, compiled in seen:
        recorded = _kernel(kernel, grid, kwargs, compiled, names, tensors, torch)
        if recorded is None:
            return None
        fast.kernels.append(recorded)
    D = tensors[0].shape[3]
    fast.default_scale = (D ** -0.5 * LOG2E, D ** -0.5)
    fast.pattern, fast.torch = pattern, torch
    fast.pre_run = tuple(kernel.pre_run_hooks for _, kernel, *_ in seen)
    fast.device, fast.current_device, fast.current_stream = target
    fast.knobs, fast.chain = _hooks()
    return fast


def _kernel(kernel, grid, kwargs, compiled, names, tensors, torch):
    """The _Kernel of one seen launch, or None where it doesn't fit: every parameter is the
    call's tensor it names (not a copy), a descriptor of one, a scale, or depends only on what
    the caller's key holds (no other float, no call tensor under another name)."""
    params = list(getattr(kernel, "arg_names", ()))
    if (not params or set(kwargs) - _OPTIONS != set(params) or getattr(kernel, "pre_run_hooks", True)
            or not isinstance(grid, tuple) or not 1 <= len(grid) <= 3 or not all(type(g) is int for g in grid)):
        return None
    try:
        run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:  # the interpreter (None), or a Triton whose compiled kernels differ
        return None
    if function is None or not callable(run):
        return None
    inputs, descriptors = names
    recorded = _Kernel()
    recorded.args = [kwargs[name] for name in params]
    recorded.slots, recorded.descriptors, recorded.scales = [], [], []
    base_only = _descriptor_base_only()
    for slot, (name, value) in enumerate(zip(params, recorded.args)):
        if name in inputs and tensors[inputs[name]] is not None:
            if value is not tensors[inputs[name]]:  # the launch made a copy (e.g. of a transposed input)
                return None
            recorded.slots.append((slot, inputs[name]))
        elif name in descriptors:
            source = tensors[descriptors[name]]
            base = getattr(value, "base", None)
            if (type(value).__name__ != "TensorDescriptor" or not hasattr(value, "__dict__")
                    or not isinstance(base, torch.Tensor) or base.data_ptr() != source.data_ptr()):
                return None
            recorded.descriptors.append((slot, descriptors[name], type(value), dict(vars(value), base=None),
                                         None if base_only else tuple(base.shape)))
        elif name in _SCALES:
            recorded.scales.append((slot, _SCALES[name]))
        elif name in inputs:  # a tensor the call doesn't have (no LSE written): the launch's stand-in stays
            continue
        elif isinstance(value, float):  # a float that isn't a scale: not known to be fixed
            return None
        elif isinstance(value, torch.Tensor) and any(t is not None and value.data_ptr() == t.data_ptr()
                                                     for t in tensors):
            return None  # a call tensor under another name
        elif type(value).__name__ == "TensorDescriptor":
            return None
    for slot, *_ in recorded.slots + recorded.descriptors + recorded.scales:
        recorded.args[slot] = None  # put in per call: the recorded call's tensors aren't kept alive
    recorded.run, recorded.function, recorded.metadata = run, function, metadata
    recorded.grid = tuple(grid) + (1,) * (3 - len(grid))
    return recorded


class Never:
    """A problem whose launches are not replayed (see `record`): the caller's cache holds this
    instead, so that the recording isn't tried again on every call."""

    __slots__ = ("pattern",)

    def __init__(self, pattern):
        self.pattern = pattern

    def __call__(self, *args):
        return None
