"""The simulator against a measured benchmark run: predicted vs measured time per pattern and length.

Reads a results JSON of `benchmarks/attention.py` (default: the committed H100 suite run) and,
when it sits beside the run's `log.txt`, every config's time from the log. Several runs of one
card can be given (`--results A --results B`): their rows are merged, and a (pattern, length)
already read from an earlier run is skipped in a later one (said in the output); `--combined DIR`
writes the merged `bench/attention.json` and `log.txt` there, which this script reads again.
Routed rows that carry `kernels_us` (torch.profiler) are compared on the attention kernel's
time alone (`attention_fwd`), the selection kernels apart; without it, on the call's time minus
the separately timed selection (an estimate, said per row). For each row it
predicts the measured config's time (model error, config choice aside), the config the
simulator would choose (and, from the log, what that config measured), FlexAttention's time
and the dense time, and tabulates the errors. Rows whose pattern is in the calibration set
were used to fit the profile; the summary's headline numbers are over the others only.

    python benchmarks/validate_sim.py                      # validate the shipped h100 profile
    python benchmarks/validate_sim.py --refit              # refit patternc/sim/profiles/h100.json first
    python benchmarks/validate_sim.py --results RUN/bench/attention.json --profile RUN/profile.json
    python benchmarks/validate_sim.py --results R --profile h200 --refit --profile-out OUT/refit.json
        # --refit keeps --profile's device constants (SMs, memory, bandwidth, name) and refits its costs

This is an offline validation against a recorded run (no GPU needed). Writes `validation.md`
and `validation.json` into --out (default `benchmarks/results/<date>-sim-validation`).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from patternc.sim import Profile, simulate  # noqa: E402
from patternc.sim.fit import Measurement, _Layouts, dense_points, fit_flex, fit_kernel, skeleton  # noqa: E402
from patternc.sim.profile import PACKAGE_DIR, config_name, parse_config  # noqa: E402

DEFAULT_RESULTS = ROOT / "benchmarks/results/2026-11-28-h100-suite/bench/attention.json"
CALIBRATION = ("causal", "blocked", "swa", "natten2d", "power")
CONFIG_LINE = re.compile(r"^\s+(\S+) S=(\d+) cfg=(\d+)x(\d+)/w(\d+)/s(\d+)/(\w+)/(\w+): ([\d.]+) ms")
DENSE_LINE = re.compile(r"^dense S=(\d+): (\{.*\})")


def find_log(results: Path) -> Path | None:
    for candidate in (results.parent / "log.txt", results.parent.parent / "log.txt"):
        if candidate.is_file():
            return candidate
    return None


def read_run(results: Path, log: Path | None):
    """(rows of the JSON, {(pattern, S): {config name: ms}}, {S: dense ms})."""
    data = json.loads(results.read_text())
    per_config, dense = {}, {}
    if log is not None:
        for line in log.read_text().splitlines():
            m = CONFIG_LINE.match(line)
            if m:
                name, S, bm, bn, w, s, iteration, memory, ms = m.groups()
                cfg = {"block_m": int(bm), "block_n": int(bn), "num_warps": int(w), "num_stages": int(s),
                       "memory": memory}
                if iteration == "table":
                    cfg["iteration"] = "table"
                per_config.setdefault((name, int(S)), {})[config_name(cfg)] = float(ms)
            m = DENSE_LINE.match(line)
            if m:
                dense.setdefault(int(m.group(1)), ast.literal_eval(m.group(2)).get("cudnn"))
    for row in data["rows"]:
        if row.get("cudnn_ms") is not None:
            dense.setdefault(row["S"], row["cudnn_ms"])
    return data, per_config, dense


def read_runs(results: list[Path], logs: list[Path | None]):
    """`read_run` over several runs of one card, merged in order: a (pattern, S) row, and a
    length's dense time, already read from an earlier run are skipped in a later one.
    Returns (data, per_config, dense, {"sources", "skipped"})."""
    merged, per_config, dense = None, {}, {}
    info = {"sources": [], "skipped": []}
    for path, log in zip(results, logs):
        data, configs, dn = read_run(path, log)
        seen = {(r["pattern"], r["S"]) for r in merged["rows"]} if merged else set()
        kept = []
        for row in data["rows"]:
            key = (row["pattern"], row["S"])
            if key in seen:
                info["skipped"].append({"pattern": key[0], "S": key[1], "run": shown(path)})
                continue
            kept.append({**row, "run": shown(path)})
            if key in configs:
                per_config[key] = configs[key]
        for S, t in dn.items():
            dense.setdefault(S, t)
        info["sources"].append({"results": shown(path), "log": None if log is None else shown(log),
                                "env": data.get("env", {})})
        if merged is None:
            merged = {**data, "rows": kept}
        else:
            merged["rows"] += kept
    if len(results) > 1:
        merged["sources"] = info["sources"]
        merged["skipped_duplicates"] = info["skipped"]
    return merged, per_config, dense, info


def write_combined(out: Path, data: dict, per_config: dict, dense: dict, info: dict) -> tuple[Path, Path]:
    """The merged run as `out/bench/attention.json` and `out/log.txt` (the log lines this script
    reads: each config's time and each length's dense time, from the run each row was kept from)."""
    (out / "bench").mkdir(parents=True, exist_ok=True)
    results = out / "bench" / "attention.json"
    results.write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# merged by benchmarks/validate_sim.py --combined from: " +
             ", ".join(s["results"] for s in info["sources"])]
    for d in info["skipped"]:
        lines.append(f"# skipped {d['pattern']} S={d['S']} of {d['run']} (kept from an earlier run)")
    for S, t in sorted(dense.items()):
        lines.append(f"dense S={S}: {{'cudnn': {t!r}}}")
    by_run = {}
    for row in data["rows"]:
        by_run.setdefault(row.get("run"), []).append(row)
    for run, rows in by_run.items():
        lines.append(f"# from {run}")
        for row in rows:
            for name, ms in per_config.get((row["pattern"], row["S"]), {}).items():
                cfg = parse_config(name)
                text = (f"{cfg['block_m']}x{cfg['block_n']}/w{cfg['num_warps']}/s{cfg['num_stages']}/"
                        f"{'table' if cfg.get('iteration') == 'table' else 'runs'}/{cfg['memory']}")
                lines.append(f"  {row['pattern']} S={row['S']} cfg={text}: {ms} ms")
    log = out / "log.txt"
    log.write_text("\n".join(lines) + "\n")
    return results, log


def row_config(row) -> dict:
    """The measured best config of a results row (`128x128/w8/s3/runs/tma`)."""
    return parse_config(row["config"])


def refit(data, per_config, dense, args, calibration, device: Profile) -> tuple[Profile, dict]:
    """Fit the kernel, Flex and dense sections on the calibration patterns' rows; the device's
    constants (name, SMs, shared memory, bandwidth, compute capability) are `device`'s."""
    ms = []
    for row in data["rows"]:
        if row["pattern"] not in calibration or row.get("patternc_ms") is None:
            continue
        common = dict(pattern=row["text"], M=row["S"], N=row["S"], heads=args.heads, head_dim=args.head_dim,
                      dtype=args.dtype)
        if row.get("selection_ms") is not None or row.get("kernels_us"):
            continue  # routed rows: their times include the selection kernels
        configs = per_config.get((row["pattern"], row["S"])) or {config_name(row_config(row)): row["patternc_ms"]}
        for name, t in configs.items():
            ms.append(Measurement(**common, ms=t, config=parse_config(name),
                                  label=f"{row['pattern']} {row['S']} {name}"))
        if row.get("flex_ms") is not None:
            ms.append(Measurement(**common, ms=row["flex_ms"], kind="flex", label=f"flex {row['pattern']} {row['S']}"))
    for S, t in sorted(dense.items()):
        ms.append(Measurement("full", S, S, args.heads, args.head_dim, args.dtype, t, kind="dense",
                              label="cuDNN SDPA (measured in the same run)"))
    base = skeleton(device.name, device.device, device.sm_count, device.smem_per_sm_kib, device.smem_per_block_kib,
                    device.hbm_gbps, device.clock_mhz)
    layouts = _Layouts()
    profile, kfit = fit_kernel(ms, base, layouts)
    profile, ffit = fit_flex(ms, profile, layouts)
    import dataclasses

    profile = dataclasses.replace(profile, dense=dense_points(ms), fit={
        "capability": list(device.fit.get("capability", [9, 0])),
        "source": ", ".join(shown(r) for r in args.results),
        "device_constants": f"from {shown(device.path) if device.path else device.name}",
        "environment": data.get("env", {}),
        "calibration_patterns": sorted(calibration),
        "calibration_rows": sorted({m.label.rsplit(" ", 1)[0] for m in ms if m.kind == "patternc"}),
        "kernel_rms_rel_error": round(kfit.rms, 4), "flex_rms_rel_error": round(ffit.rms, 4),
        "note": "costs fitted by patternc.sim.fit on the calibration rows only; the other suite rows validate",
    })
    return profile, {"kernel": kfit, "flex": ffit}


def calibrated_problems(profile: Profile) -> set | None:
    """The (pattern text, length) problems a `patternc calibrate` profile was fitted on (from the
    labels of its calibration rows), or None for a profile fitted on suite rows by pattern name."""
    if profile.fit.get("source") != "patternc calibrate":
        return None
    from patternc.sim.calibrate import PATTERNS, neighborhood_pattern

    out = set()
    for label in profile.fit.get("calibration_rows", []):
        name, S = label.split()[:2]
        text = {**PATTERNS, "causal-table": "causal"}.get(name) or (neighborhood_pattern(int(S)) if name == "natten2d"
                                                                  else name)
        out.add((text, int(S)))
    return out


def shown(path) -> str:
    """A path relative to the repository when it is inside it (results files are committed)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pct(pred, meas):
    return None if pred is None or meas is None else 100 * (pred / meas - 1)


def measured_kernel(row) -> tuple[float, str]:
    """(the measured time of the attention kernel, what it is): a routed row's call also runs the
    selection kernels, which the kernel model does not cover; its `attention_fwd` time from
    torch.profiler when the row has it, else the call minus the selection timed on its own."""
    kernels = row.get("kernels_us") or {}
    attn = [us for name, us in kernels.items() if "attention_fwd" in name]
    if attn:
        return sum(attn) / 1e3, "attention_fwd (torch.profiler)"
    if row.get("selection_ms") is not None:
        return row["patternc_ms"] - row["selection_ms"], "call - selection timed alone (estimate)"
    return row["patternc_ms"], "call"


def validate(data, per_config, dense, args, profile, calibration, problems=None) -> dict:
    """Predictions against the measured rows. A row is a fitted one ("fit") if its pattern is in
    `calibration` or, for a calibrated profile, if `problems` holds its (text, S)."""
    rows = []
    for row in data["rows"]:
        if row.get("patternc_ms") is None:
            continue
        name, S = row["pattern"], row["S"]
        fitted = (row["text"], S) in problems if problems is not None else name in calibration
        measured_cfg = row_config(row)
        p_measured = simulate(row["text"], S, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                              device=profile, config=measured_cfg)
        p_all = simulate(row["text"], S, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, device=profile)
        measured, basis = measured_kernel(row)
        offset = row["patternc_ms"] - measured  # the selection's share of every config's call (routed)
        logged = {k: v - offset for k, v in per_config.get((name, S), {}).items()}
        chosen = p_all.config_name
        configs = []
        for c in p_all.configs:
            meas = logged.get(c.name)
            configs.append({"config": c.name, "predicted_ms": c.ms, "measured_ms": meas, "error_pct": pct(c.ms, meas)})
        kernel_ms = p_measured.ms - p_measured.routed_ms
        flex_pred = None if p_all.flex_ms is None else p_all.flex_ms - p_all.routed_ms
        dense_t = row.get("cudnn_ms") or p_all.dense_ms
        rows.append({
            "pattern": name, "S": S, "role": "fit" if fitted else "validate", "run": row.get("run"),
            "measured_config": config_name(measured_cfg), "measured_ms": measured, "measured_is": basis,
            "predicted_ms": kernel_ms, "error_pct": pct(kernel_ms, measured),
            "chosen_config": chosen, "chosen_predicted_ms": p_all.ms - p_all.routed_ms,
            "chosen_measured_ms": logged.get(chosen),
            "choice_regret_pct": pct(logged.get(chosen), measured) if logged.get(chosen) else None,
            "flex_measured_ms": row.get("flex_ms"), "flex_predicted_ms": flex_pred,
            "flex_error_pct": pct(flex_pred, row.get("flex_ms")),
            "selection_measured_ms": row.get("selection_gpu_ms"),
            "selection_predicted_ms": p_measured.routed_ms if p_measured.routed_ms else None,
            "dense_measured_ms": row.get("cudnn_ms"), "dense_predicted_ms": p_all.dense_ms,
            "speedup_vs_dense_measured": row.get("speedup_vs_cudnn"),
            "speedup_vs_dense_predicted": dense_t / p_measured.ms,
            "density": p_measured.density, "iteration": p_measured.chosen.iteration,
            # the naive model for contrast: dense time x density (the FLOP-bound ideal taken as a prediction)
            "naive_ms": dense_t * p_measured.density,
            "naive_error_pct": pct(dense_t * p_measured.density, measured),
            "ideal_speedup": p_measured.ideal_speedup, "worst_tile_speedup": p_measured.worst_tile_speedup,
            "configs": configs,
        })

    def stats(values):
        values = [abs(v) for v in values if v is not None]
        if not values:
            return None
        return {"n": len(values), "median_abs_pct": statistics.median(values), "worst_abs_pct": max(values),
                "mean_abs_pct": statistics.fmean(values)}

    val = [r for r in rows if r["role"] == "validate"]
    fit = [r for r in rows if r["role"] == "fit"]
    return {
        "rows": rows,
        "summary": {
            "best_config_validation": stats(r["error_pct"] for r in val),
            "best_config_fit_rows": stats(r["error_pct"] for r in fit),
            "best_config_all_rows": stats(r["error_pct"] for r in rows),
            "every_config_validation": stats(c["error_pct"] for r in val for c in r["configs"]),
            "every_config_fit_rows": stats(c["error_pct"] for r in fit for c in r["configs"]),
            "every_config_all_rows": stats(c["error_pct"] for r in rows for c in r["configs"]),
            "flex_validation": stats(r["flex_error_pct"] for r in val),
            "flex_fit_rows": stats(r["flex_error_pct"] for r in fit),
            "choice_regret_all_rows": stats(r["choice_regret_pct"] for r in rows),
            "naive_density_model_validation": stats(r["naive_error_pct"] for r in val),
        },
    }


def markdown(result, args, profile, env, problems=None) -> str:
    from tabulate import tabulate

    s = result["summary"]

    def line(key, what):
        v = s.get(key)
        return f"- {what}: " + ("no rows" if v is None else
                                f"median |error| {v['median_abs_pct']:.1f} %, worst {v['worst_abs_pct']:.1f} % "
                                f"(n = {v['n']})")

    if problems is not None:
        fitted = ("`patternc calibrate`'s microbenchmarks (" + ", ".join(
            f"{t!r} at {S}" for t, S in sorted(problems)) + "); rows of the same pattern and length count as fitted, "
            "every other row is a validation row")
    else:
        fitted = ("the rows of: " + ", ".join(profile.fit.get("calibration_patterns", [])) +
                  " (every config of those rows, and their FlexAttention times). Every other row is a validation row: "
                  "nothing of it went into the profile")
    runs = [shown(r) for r in args.results]
    skipped = result.get("skipped_duplicates") or []
    head = [
        "# Simulator validation (offline, against a recorded run)", "",
        f"Measured: {', '.join(f'`{r}`' for r in runs)} ({env.get('card', '?')}, torch {env.get('torch', '?')}, "
        f"triton {env.get('triton', '?')}, {env.get('date', '?')}); bf16, B=1, H={args.heads}, D={args.head_dim}.",
        *(["Rows measured in several runs are kept from the first: skipped "
           + ", ".join(f"{d['pattern']} {d['S']} of `{d['run']}`" for d in skipped) + "."] if skipped else []),
        f"Profile: `{shown(profile.path) if profile.path else profile.name}`; its costs were fitted on {fitted}.",
        "Routed rows compare the attention kernel alone (see `measured_is` in validation.json); their selection "
        "kernels are listed apart.",
        "This compares the model with times recorded in an earlier GPU run; it is not a new GPU measurement.", "",
        "## Summary", "",
        line("best_config_validation", "patternc, measured best config, validation rows "
             "(the target: <= 10 % median, <= 25 % worst)"),
        line("best_config_fit_rows", "patternc, measured best config, fitted rows"),
        line("best_config_all_rows", "patternc, measured best config, all rows"),
        line("every_config_validation", "patternc, every config in the log, validation rows"),
        line("every_config_fit_rows", "patternc, every config in the log, fitted rows"),
        line("every_config_all_rows", "patternc, every config in the log, all rows"),
        line("flex_validation", "FlexAttention, validation rows"),
        line("flex_fit_rows", "FlexAttention, fitted rows"),
        line("choice_regret_all_rows", "regret of the simulator's config choice, all rows (its config's measured time "
             "over the measured best; 'error' here is that excess)"),
        line("naive_density_model_validation", "for contrast, 'dense time x density' as a prediction, validation rows"),
        "", "Dense (cuDNN) times are profile inputs (measured at each length in the same run), not predictions.", "",
    ]
    sel = [r for r in result["rows"] if r.get("selection_predicted_ms") is not None]
    if sel:
        head += ["Routed selection (pooling, scoring, top-k and compaction kernels; GPU time from torch.profiler; "
                 "the model is a placeholder, not fitted):", ""]
        head.append(tabulate([[r["pattern"], r["S"], r["selection_measured_ms"], r["selection_predicted_ms"],
                               pct(r["selection_predicted_ms"], r["selection_measured_ms"])] for r in sel],
                             headers=["pattern", "S", "measured ms", "predicted ms", "error %"], tablefmt="github",
                             floatfmt=".3f"))
        head.append("")
    head += ["## Per pattern and length", ""]
    table = []
    for r in result["rows"]:
        table.append([r["pattern"], r["S"], r["role"], r["iteration"], r["measured_config"], r["measured_ms"],
                      r["predicted_ms"], r["error_pct"], r["chosen_config"], r["chosen_measured_ms"],
                      r["flex_measured_ms"], r["flex_predicted_ms"], r["flex_error_pct"],
                      r["speedup_vs_dense_measured"], r["speedup_vs_dense_predicted"]])
    cols = ["pattern", "S", "role", "loop", "measured config", "measured ms", "predicted ms", "error %",
            "sim's config", "its measured ms", "flex ms", "flex pred ms", "flex error %", "speedup (meas)",
            "speedup (pred)"]
    body = tabulate(table, headers=cols, tablefmt="github", floatfmt=".3f")
    per_config = []
    for r in result["rows"]:
        for c in r["configs"]:
            per_config.append([r["pattern"], r["S"], r["role"], c["config"], c["measured_ms"], c["predicted_ms"],
                               c["error_pct"]])
    tail = ["", "## Every config (from the run's log)", "",
            tabulate(per_config, headers=["pattern", "S", "role", "config", "measured ms", "predicted ms", "error %"],
                     tablefmt="github", floatfmt=".3f")]
    return "\n".join(head) + body + "\n" + "\n".join(tail) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, action="append",
                    help="attention.json of benchmarks/attention.py (repeat for several runs of one card; a row "
                         "already read from an earlier run is skipped)")
    ap.add_argument("--log", type=Path, action="append",
                    help="the run's log.txt, one per --results (default: beside or above each JSON)")
    ap.add_argument("--combined", type=Path, metavar="DIR",
                    help="write the merged runs to DIR/bench/attention.json and DIR/log.txt")
    ap.add_argument("--profile", default="h100",
                    help="device profile to validate (name or JSON path); with --refit, the device whose constants "
                         "(name, SMs, shared memory, bandwidth, capability) the refit profile keeps")
    ap.add_argument("--refit", action="store_true",
                    help="first refit the profile's costs on the calibration rows and write it to --profile-out")
    ap.add_argument("--calibration", default=",".join(CALIBRATION), help="patterns whose rows the refit uses")
    ap.add_argument("--profile-out", type=Path, help="where --refit writes the profile (default: the shipped "
                    "patternc/sim/profiles/<name>.json)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-sim-validation)")
    args = ap.parse_args(argv)
    args.results = args.results or [DEFAULT_RESULTS]
    if args.log and len(args.log) != len(args.results):
        ap.error("give one --log per --results, or none")
    logs = args.log or [find_log(r) for r in args.results]
    data, per_config, dense, info = read_runs(args.results, logs)
    if args.combined:
        results, log = write_combined(args.combined, data, per_config, dense, info)
        print(f"wrote {results} and {log}")
    calibration = set(args.calibration.split(","))
    problems = None
    if args.refit:
        profile, fits = refit(data, per_config, dense, args, calibration, Profile.load(args.profile))
        path = profile.write(args.profile_out or PACKAGE_DIR / f"{profile.name}.json")
        profile = Profile.load(path)
        print(f"wrote {path}: kernel rms {fits['kernel'].rms:.3f}, flex rms {fits['flex'].rms:.3f}")
    else:
        profile = Profile.load(args.profile)
        calibration = set(profile.fit.get("calibration_patterns", calibration))
        problems = calibrated_problems(profile)
    result = validate(data, per_config, dense, args, profile, calibration, problems)
    result["profile"] = shown(profile.path) if profile.path else profile.name
    result["results"] = [shown(r) for r in args.results]
    result["log"] = [None if log is None else shown(log) for log in logs]
    result["skipped_duplicates"] = info["skipped"]
    result["calibration_patterns"] = sorted(calibration) if problems is None else None
    result["calibration_problems"] = None if problems is None else sorted([t, S] for t, S in problems)
    env = data.get("env", {})
    out = args.out or ROOT / "benchmarks/results" / f"{datetime.date.today().isoformat()}-sim-validation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    md = markdown(result, args, profile, env, problems)
    (out / "validation.md").write_text(md)
    print(md.split("## Per pattern")[0])
    print(f"wrote {out / 'validation.md'} and validation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
