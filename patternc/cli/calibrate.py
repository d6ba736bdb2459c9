"""`patternc calibrate`: measure a simulator device profile on this GPU.

    patternc calibrate                      # on a GPU: writes <cache>/profiles/<gpu>.json
    patternc calibrate --from-log LOG --base PROFILE -o OUT.json   # no GPU: refit to a run's printed times
"""
from __future__ import annotations

import json

from .common import (UsageError, command, dtype_argument, head_dim_argument, heads_argument, json_argument,
                     progress_lines, seq_len_argument)

DENSE_LENGTHS, FLEX_PATTERNS = 3, 4  # the steps calibrate takes besides its kernel jobs


def _arguments(p):
    p.add_argument("--name", metavar="NAME", help="profile name (default: from the GPU's name, e.g. h100-80gb-hbm3)")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="where to write the profile JSON (default: <patternc cache>/profiles/NAME.json, which "
                        "`simulate --device NAME` finds)")
    seq_len_argument(p, "sequence length of the microbenchmarks (default 8192; with --from-log: read from the log)")
    heads_argument(p, "heads (default 16)", default=16)
    head_dim_argument(p, "head dimension the profile is measured at (default 128)")
    dtype_argument(p, help="dtype the profile is measured at (default bf16)")
    p.add_argument("--flex", action="store_true",
                   help="also time FlexAttention (torch.compile: adds a minute); else its costs are scaled from h100")
    p.add_argument("--from-log", metavar="LOG",
                   help="no GPU: refit a profile to the times an earlier calibrate run printed (LOG: its output), "
                        "e.g. after the model changed; needs --base")
    p.add_argument("--base", metavar="NAME|PATH",
                   help="with --from-log: the profile that run wrote (device constants, capability, environment)")
    json_argument(p, "print the profile as JSON")


@command("calibrate", "measure a simulator device profile on this GPU (microbenchmarks, under a minute)", _arguments)
def cmd_calibrate(args) -> int:
    from pathlib import Path

    from ..sim.calibrate import calibrate, refit_from_log, require_gpu
    from ..sim.profile import user_profile_dir

    if args.from_log:
        if not args.base:
            raise UsageError("--from-log needs --base (the profile of that GPU)")
        profile, fits = refit_from_log(args.from_log, args.base, args.name, args.seq_len, args.heads,
                                       args.head_dim, args.dtype)
    else:
        require_gpu()  # before anything slow, so a CPU machine gets the answer at once
        say = progress_lines(_steps(args), "calibrate", quiet=args.json)
        try:
            profile, fits = calibrate(args.name, args.seq_len or 8192, args.heads, args.head_dim, args.dtype,
                                      args.flex, progress=say)
        finally:
            say.close()
    path = Path(args.output) if args.output else user_profile_dir() / f"{profile.name}.json"
    profile.write(path)
    if args.json:
        print(json.dumps({"path": str(path), **profile.to_dict()}, indent=2))
        return 0
    print(f"\nwrote {path}: {profile.device}, {profile.sm_count} SMs; kernel fit rms error "
          f"{fits['kernel'].rms:.1%} over {len(fits['kernel'].errors)} measurements")
    print(f"use it: patternc simulate FILE --seq-len N --device {profile.name}")
    return 0


def _steps(args) -> int:
    """How many progress lines calibrate prints: one per kernel job, dense length and flex pattern."""
    import torch

    from ..runtime.autotune import candidates
    from ..sim.calibrate import calibration_jobs
    from ..sim.profile import dtype_name

    configs = candidates(args.head_dim, getattr(torch, dtype_name(args.dtype)), torch.cuda.get_device_capability())
    return len(calibration_jobs(configs, args.seq_len or 8192)) + DENSE_LENGTHS + FLEX_PATTERNS * args.flex
