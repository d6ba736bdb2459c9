"""The simulator against a measured benchmark run: predicted vs measured time per pattern and length.

Reads a results JSON of `benchmarks/attention.py` (default: the committed H100 suite run) and,
when it sits beside the run's `log.txt`, every config's time from the log. For each row it
predicts the measured config's time (model error, config choice aside), the config the
simulator would choose (and, from the log, what that config measured), FlexAttention's time
and the dense time, and tabulates the errors. Rows whose pattern is in the calibration set
were used to fit the profile; the summary's headline numbers are over the others only.

    python benchmarks/validate_sim.py                      # validate the shipped h100 profile
    python benchmarks/validate_sim.py --refit              # refit patternc/sim/profiles/h100.json first

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
H100 = dict(name="h100", device="NVIDIA H100 80GB HBM3 (SXM)", sm_count=132, smem_per_sm_kib=228,
            smem_per_block_kib=227, hbm_gbps=3350, clock_mhz=1980)


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
                dense[int(m.group(1))] = ast.literal_eval(m.group(2)).get("cudnn")
    for row in data["rows"]:
        if row.get("cudnn_ms") is not None:
            dense.setdefault(row["S"], row["cudnn_ms"])
    return data, per_config, dense


def row_config(row) -> dict:
    """The measured best config of a results row (`128x128/w8/s3/runs/tma`)."""
    return parse_config(row["config"])


def refit(data, per_config, dense, args, calibration) -> tuple[Profile, dict]:
    """Fit the kernel, Flex and dense sections on the calibration patterns' rows."""
    ms = []
    for row in data["rows"]:
        if row["pattern"] not in calibration or row.get("patternc_ms") is None:
            continue
        common = dict(pattern=row["text"], M=row["S"], N=row["S"], heads=args.heads, head_dim=args.head_dim,
                      dtype=args.dtype)
        configs = per_config.get((row["pattern"], row["S"])) or {config_name(row_config(row)): row["patternc_ms"]}
        for name, t in configs.items():
            ms.append(Measurement(**common, ms=t, config=parse_config(name),
                                  label=f"{row['pattern']} {row['S']} {name}"))
        if row.get("flex_ms") is not None:
            ms.append(Measurement(**common, ms=row["flex_ms"], kind="flex", label=f"flex {row['pattern']} {row['S']}"))
    for S, t in sorted(dense.items()):
        ms.append(Measurement("full", S, S, args.heads, args.head_dim, args.dtype, t, kind="dense",
                              label="cuDNN SDPA (measured in the same run)"))
    base = skeleton(**H100)
    layouts = _Layouts()
    profile, kfit = fit_kernel(ms, base, layouts)
    profile, ffit = fit_flex(ms, profile, layouts)
    import dataclasses

    profile = dataclasses.replace(profile, dense=dense_points(ms), fit={
        "capability": [9, 0],
        "source": shown(args.results),
        "environment": data.get("env", {}),
        "calibration_patterns": sorted(calibration),
        "calibration_rows": sorted({m.label.rsplit(" ", 1)[0] for m in ms if m.kind == "patternc"}),
        "kernel_rms_rel_error": round(kfit.rms, 4), "flex_rms_rel_error": round(ffit.rms, 4),
        "note": "costs fitted by patternc.sim.fit on the calibration rows only; the other suite rows validate",
    })
    return profile, {"kernel": kfit, "flex": ffit}


def shown(path) -> str:
    """A path relative to the repository when it is inside it (results files are committed)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pct(pred, meas):
    return None if pred is None or meas is None else 100 * (pred / meas - 1)


def validate(data, per_config, dense, args, profile, calibration) -> dict:
    rows = []
    for row in data["rows"]:
        if row.get("patternc_ms") is None:
            continue
        name, S = row["pattern"], row["S"]
        measured_cfg = row_config(row)
        p_measured = simulate(row["text"], S, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                              device=profile, config=measured_cfg)
        p_all = simulate(row["text"], S, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, device=profile)
        logged = per_config.get((name, S), {})
        chosen = p_all.config_name
        configs = []
        for c in p_all.configs:
            meas = logged.get(c.name)
            configs.append({"config": c.name, "predicted_ms": c.ms, "measured_ms": meas, "error_pct": pct(c.ms, meas)})
        rows.append({
            "pattern": name, "S": S, "role": "fit" if name in calibration else "validate",
            "measured_config": config_name(measured_cfg), "measured_ms": row["patternc_ms"],
            "predicted_ms": p_measured.ms, "error_pct": pct(p_measured.ms, row["patternc_ms"]),
            "chosen_config": chosen, "chosen_predicted_ms": p_all.ms, "chosen_measured_ms": logged.get(chosen),
            "choice_regret_pct": pct(logged.get(chosen), row["patternc_ms"]) if logged.get(chosen) else None,
            "flex_measured_ms": row.get("flex_ms"), "flex_predicted_ms": p_all.flex_ms,
            "flex_error_pct": pct(p_all.flex_ms, row.get("flex_ms")),
            "dense_measured_ms": row.get("cudnn_ms"), "dense_predicted_ms": p_all.dense_ms,
            "speedup_vs_dense_measured": row.get("speedup_vs_cudnn"),
            "speedup_vs_dense_predicted": (row.get("cudnn_ms") or p_all.dense_ms) / p_measured.ms,
            "density": p_measured.density, "iteration": p_measured.chosen.iteration,
            # the naive model for contrast: dense time x density (the FLOP-bound ideal taken as a prediction)
            "naive_ms": (row.get("cudnn_ms") or p_all.dense_ms) * p_measured.density,
            "naive_error_pct": pct((row.get("cudnn_ms") or p_all.dense_ms) * p_measured.density, row["patternc_ms"]),
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
            "every_config_validation": stats(c["error_pct"] for r in val for c in r["configs"]),
            "every_config_fit_rows": stats(c["error_pct"] for r in fit for c in r["configs"]),
            "flex_validation": stats(r["flex_error_pct"] for r in val),
            "flex_fit_rows": stats(r["flex_error_pct"] for r in fit),
            "choice_regret_all_rows": stats(r["choice_regret_pct"] for r in rows),
            "naive_density_model_validation": stats(r["naive_error_pct"] for r in val),
        },
    }


def markdown(result, args, profile, env) -> str:
    from tabulate import tabulate

    s = result["summary"]

    def line(key, what):
        v = s.get(key)
        return f"- {what}: " + ("no rows" if v is None else
                                f"median |error| {v['median_abs_pct']:.1f} %, worst {v['worst_abs_pct']:.1f} % "
                                f"(n = {v['n']})")

    fit_rows = ", ".join(profile.fit.get("calibration_patterns", []))
    head = [
        "# Simulator validation (offline, against a recorded run)", "",
        f"Measured: `{shown(args.results)}` ({env.get('card', '?')}, torch {env.get('torch', '?')}, "
        f"triton {env.get('triton', '?')}, {env.get('date', '?')}); bf16, B=1, H={args.heads}, D={args.head_dim}.",
        f"Profile: `{shown(profile.path) if profile.path else profile.name}`; its costs were fitted on the rows of: "
        f"{fit_rows} "
        "(every config of those rows, and their FlexAttention times). Every other row is a validation row: "
        "nothing of it went into the profile.",
        "This compares the model with times recorded in an earlier GPU run; it is not a new GPU measurement.", "",
        "## Summary", "",
        line("best_config_validation", "patternc, measured best config, validation rows "
             "(the target: <= 10 % median, <= 25 % worst)"),
        line("best_config_fit_rows", "patternc, measured best config, fitted rows"),
        line("every_config_validation", "patternc, every config in the log, validation rows"),
        line("every_config_fit_rows", "patternc, every config in the log, fitted rows"),
        line("flex_validation", "FlexAttention, validation rows"),
        line("flex_fit_rows", "FlexAttention, fitted rows"),
        line("choice_regret_all_rows", "regret of the simulator's config choice, all rows (its config's measured time "
             "over the measured best; 'error' here is that excess)"),
        line("naive_density_model_validation", "for contrast, 'dense time x density' as a prediction, validation rows"),
        "", "Dense (cuDNN) times are profile inputs (measured at each length in the same run), not predictions.", "",
        "## Per pattern and length", "",
    ]
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
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="attention.json of benchmarks/attention.py")
    ap.add_argument("--log", type=Path, help="the run's log.txt (default: beside or above the JSON)")
    ap.add_argument("--profile", default="h100", help="device profile to validate (name or JSON path)")
    ap.add_argument("--refit", action="store_true",
                    help="first refit the profile on the calibration rows and write it to patternc/sim/profiles/")
    ap.add_argument("--calibration", default=",".join(CALIBRATION), help="patterns whose rows the refit uses")
    ap.add_argument("--profile-out", type=Path, help="where --refit writes the profile (default: the shipped "
                    "patternc/sim/profiles/h100.json)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-sim-validation)")
    args = ap.parse_args(argv)
    log = args.log or find_log(args.results)
    data, per_config, dense = read_run(args.results, log)
    calibration = set(args.calibration.split(","))
    if args.refit:
        profile, fits = refit(data, per_config, dense, args, calibration)
        path = profile.write(args.profile_out or PACKAGE_DIR / f"{profile.name}.json")
        profile = Profile.load(path)
        print(f"wrote {path}: kernel rms {fits['kernel'].rms:.3f}, flex rms {fits['flex'].rms:.3f}")
    else:
        profile = Profile.load(args.profile)
        calibration = set(profile.fit.get("calibration_patterns", calibration))
    result = validate(data, per_config, dense, args, profile, calibration)
    result["profile"] = shown(profile.path) if profile.path else profile.name
    result["results"] = shown(args.results)
    result["log"] = None if log is None else shown(log)
    result["calibration_patterns"] = sorted(calibration)
    env = data.get("env", {})
    out = args.out or ROOT / "benchmarks/results" / f"{datetime.date.today().isoformat()}-sim-validation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    md = markdown(result, args, profile, env)
    (out / "validation.md").write_text(md)
    print(md.split("## Per pattern")[0])
    print(f"wrote {out / 'validation.md'} and validation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
