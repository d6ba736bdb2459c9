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
_INPUTS = {"Q": 0, "K": 1, "V": 2, "Out": 3}  # pointer parameters -> q, k, v, out
_DESCRIPTORS = {"desc_q": 0, "desc_k": 1, "desc_v": 2, "desc_o": 3}  # TMA descriptors of the same
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


class FastLaunch:
    """One recorded launch of one problem, replayed with a call's tensors (see the module)."""

    __slots__ = ("args", "chain", "current_device", "current_stream", "default_scale", "descriptors", "device",
                 "function", "grid", "knobs", "lse", "lse_shape", "lse_slot", "metadata", "pattern", "pre_run",
                 "run", "scale_slot", "slots", "torch")

    def __call__(self, q, k, v, scale, return_lse):
        """(out, lse or None), or None when the recorded launch doesn't fit this call."""
        if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:  # Triton specialized on 16-byte alignment
            return None
        knobs, chain = self.knobs, self.chain
        enter, leave = knobs.launch_enter_hook, knobs.launch_exit_hook
        if ((enter is not None and (chain is None or type(enter) is not chain or enter.calls))
                or (leave is not None and (chain is None or type(leave) is not chain or leave.calls))
                or self.pre_run or self.current_device() != self.device or return_lse != self.lse):
            return None
        if scale is None:
            qk_scale = self.default_scale
        elif type(scale) is float or type(scale) is int:
            qk_scale = scale * LOG2E
        else:  # anything else goes through launch() and Triton's own argument handling
            return None
        torch = self.torch
        out = torch.empty_like(q)
        args = self.args.copy()
        tensors = (q, k, v, out)
        for slot, which in self.slots:
            args[slot] = tensors[which]
        for slot, which, cls, fields, view in self.descriptors:
            desc = object.__new__(cls)
            desc.__dict__.update(fields)
            desc.base = tensors[which] if view is None else tensors[which].view(view)
            args[slot] = desc
        args[self.scale_slot] = qk_scale
        lse = None
        if return_lse:
            lse = args[self.lse_slot] = torch.empty(self.lse_shape, dtype=torch.float32, device=q.device)
        grid = self.grid
        self.run(grid[0], grid[1], grid[2], self.current_stream(self.device), self.function, self.metadata,
                 None, None, None, *args)
        return out, lse


def record(module, layout, q, k, v, scale, lse, pattern):
    """Run `module.launch(q, k, v, layout, scale=scale, lse=lse)` once, as it is, and return
    (out, lse, what to keep for the problem's later calls): a FastLaunch, `Never(pattern)` where
    this launch can't be replayed, or None where nothing was recorded (not on the current CUDA
    device: a later call may be)."""
    import torch

    target = _target(q)
    if target is None:
        out, lse = module.launch(q, k, v, layout, scale=scale, lse=lse)
        return out, lse, None
    kernel = getattr(module, "attention_fwd", None)
    if kernel is None or getattr(module, "LOG2E", None) != LOG2E:
        out, lse = module.launch(q, k, v, layout, scale=scale, lse=lse)
        return out, lse, Never(pattern)
    seen = []

    class Seen:  # stands for the kernel in launch()'s globals during this one call
        def __getitem__(self, grid):
            def launch(**kwargs):
                compiled = _compiled(kernel, grid, kwargs)
                seen.append((grid, kwargs, compiled))
                return compiled
            return launch

    out, lse = launch_with(module, Seen())(q, k, v, layout, scale=scale, lse=lse)
    fast = None
    if len(seen) == 1:
        grid, kwargs, compiled = seen[0]
        fast = _replay(kernel, grid, kwargs, compiled, (q, k, v, out), lse, target, pattern, torch)
    return out, lse, Never(pattern) if fast is None else fast


def launch_with(module, kernel):
    """`module.launch` with `kernel` in place of the module's `attention_fwd` (the module itself
    unchanged: the function gets globals of its own)."""
    launch = module.launch
    copy = types.FunctionType(launch.__code__, {**vars(module), "attention_fwd": kernel}, launch.__name__,
                              launch.__defaults__, launch.__closure__)
    copy.__kwdefaults__ = launch.__kwdefaults__
    return copy


def _replay(kernel, grid, kwargs, compiled, tensors, lse, target, pattern, torch):
    """The FastLaunch of one seen kernel call, or None where it doesn't fit the module's rules."""
    names = list(getattr(kernel, "arg_names", ()))
    if (not names or set(kwargs) - _OPTIONS != set(names) or getattr(kernel, "pre_run_hooks", True)
            or not isinstance(grid, tuple) or not 1 <= len(grid) <= 3 or not all(type(g) is int for g in grid)):
        return None
    try:
        run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:  # the interpreter (None), or a Triton whose compiled kernels differ
        return None
    if function is None or not callable(run):
        return None
    if any(t.data_ptr() % 16 for t in tensors[:3]):  # specialized as unaligned: leave such calls to Triton
        return None
    fast = FastLaunch()
    fast.args = [kwargs[name] for name in names]
    fast.slots, fast.descriptors, fast.lse_slot, fast.scale_slot = [], [], None, None
    base_only = _descriptor_base_only()
    for slot, (name, value) in enumerate(zip(names, fast.args)):
        if name in _INPUTS:
            if value is not tensors[_INPUTS[name]]:  # launch() made a copy (e.g. a transposed input)
                return None
            fast.slots.append((slot, _INPUTS[name]))
        elif name in _DESCRIPTORS:
            source = tensors[_DESCRIPTORS[name]]
            base = getattr(value, "base", None)
            if (type(value).__name__ != "TensorDescriptor" or not hasattr(value, "__dict__")
                    or not isinstance(base, torch.Tensor) or base.data_ptr() != source.data_ptr()
                    or not source.is_contiguous()):
                return None
            fast.descriptors.append((slot, _DESCRIPTORS[name], type(value), dict(vars(value), base=None),
                                     None if base_only else tuple(base.shape)))
        elif name == "Lse":
            if lse is not None:
                if value is not lse or not lse.is_contiguous():
                    return None
                fast.lse_slot = slot
        elif name == "qk_scale":
            fast.scale_slot = slot
        elif isinstance(value, float):  # a float that isn't the scale: not known to be fixed
            return None
        elif isinstance(value, torch.Tensor) and any(value.data_ptr() == t.data_ptr() for t in tensors):
            return None  # an input under another name
        elif type(value).__name__ == "TensorDescriptor":
            return None
    if fast.scale_slot is None or (lse is not None and fast.lse_slot is None):
        return None
    for slot in [slot for slot, _ in fast.slots] + [slot for slot, *_ in fast.descriptors] + [fast.lse_slot]:
        if slot is not None:
            fast.args[slot] = None  # put in per call: the recorded call's tensors aren't kept alive
    D = tensors[0].shape[3]
    fast.default_scale = D ** -0.5 * LOG2E
    fast.lse_shape = tuple(tensors[0].shape[:3])
    fast.pattern, fast.pre_run, fast.torch, fast.lse = pattern, kernel.pre_run_hooks, torch, lse is not None
    fast.run, fast.function, fast.metadata = run, function, metadata
    fast.grid = tuple(grid) + (1,) * (3 - len(grid))
    fast.device, fast.current_device, fast.current_stream = target
    fast.knobs, fast.chain = _hooks()
    return fast


class Never:
    """A problem whose launches are not replayed (see `record`): the caller's cache holds this
    instead, so that the recording isn't tried again on every call."""

    __slots__ = ("pattern",)

    def __init__(self, pattern):
        self.pattern = pattern

    def __call__(self, q, k, v, scale, return_lse):
        return None
