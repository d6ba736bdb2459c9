"""Device profiles: what the simulator knows about one GPU, as a JSON file.

A profile holds the device's constants (SM count, clocks, memory), the fitted costs of the
generated kernels (per tile configuration: the time of one full key tile in a program slot,
and the CTAs an SM holds; shared: launch, per-program, per-run-slot, index-table (one per
memory path: pointer loads and TMA copies), masking and predicate-operation costs),
FlexAttention's costs, and the dense (cuDNN-class) kernel's measured times. Shipped profiles
live in `patternc/sim/profiles/<name>.json`; `patternc calibrate` writes new ones into the
user's profile directory (`<cache>/profiles/`).

Costs are *slot times*: an SM holding k CTAs of a config runs k programs at once, each at
1/k of the SM, so a config's tile costs are the time one program spends on a tile while
the SM is full (see `patternc.sim.model`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..aot import dtype_name  # noqa: F401 - the simulator names dtypes as the compiler does
from ..errors import PatternError, closest

SCHEMA = 1
PACKAGE_DIR = Path(__file__).resolve().parent / "profiles"

KERNEL_KEYS = ("launch_us", "program_us", "run_slot_us", "table_tile_us", "table_tile_tma_us",
               "mask_ns_per_element", "op_ns_per_element")
# kernel keys a profile may leave out, and the key whose value stands in for them (profiles
# written before the TMA path's index-table cost was told apart charge both paths alike)
KERNEL_DEFAULTS = {"table_tile_tma_us": "table_tile_us"}
FLEX_KEYS = ("block", "launch_us", "program_us", "full_tile_us", "mask_us", "op_us")
DEVICE_KEYS = ("sm_count", "smem_per_sm_kib", "smem_per_block_kib", "hbm_gbps")


@dataclass(frozen=True)
class TileConfig:
    """The fitted costs of one kernel configuration (at the profile's reference head_dim and dtype)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    memory: str
    full_tile_us: float
    ctas_per_sm: int

    @property
    def name(self) -> str:
        return config_name(self.__dict__)


@dataclass(frozen=True)
class Profile:
    """A device profile (see the module docstring); `Profile.load(name_or_path)` reads one."""

    name: str
    device: str
    sm_count: int
    smem_per_sm_kib: float
    smem_per_block_kib: float
    hbm_gbps: float
    reference: dict  # {"head_dim", "dtype"}: the shape the costs were measured at
    kernel: dict  # KERNEL_KEYS
    configs: tuple[TileConfig, ...]
    flex: dict  # FLEX_KEYS
    dense: dict  # {"kernel": str, "points": [{"M", "N", "ms"}...], "heads", "batch"}
    mma_fraction: float = 0.75  # share of a tile's time that scales with head_dim (extrapolation only)
    clock_mhz: float | None = None
    fit: dict = field(default_factory=dict)  # how the costs were obtained (rows, errors)
    path: str | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, name_or_path: str | Path = "h100") -> Profile:
        """A shipped profile by name (`"h100"`), a calibrated one from the user's profile
        directory by name, or a JSON file by path."""
        path = find_profile(name_or_path)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise PatternError(f"can't read the device profile {path}: {e.strerror}") from None
        except ValueError as e:
            raise PatternError(f"the device profile {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> Profile:
        """Validate and build; every problem is a `PatternError` naming the field."""
        where = path or "<profile>"

        def fail(message, hint=None):
            raise PatternError(f"device profile {where}: {message}", None, hint)

        if not isinstance(data, dict):
            fail("expected a JSON object")
        if data.get("schema") != SCHEMA:
            fail(f"schema {data.get('schema')!r} is not {SCHEMA}", "re-run `patternc calibrate` to write a new one")

        def number(obj, key, section, minimum=0.0, integer=False):
            value = obj.get(key) if isinstance(obj, dict) else None
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < minimum or (integer and int(value) != value):
                kind = "an integer" if integer else "a number"
                fail(f"{section}{key} must be {kind} >= {minimum}, got {value!r}")
            return int(value) if integer else float(value)

        for key in ("name", "device"):
            if not isinstance(data.get(key), str):
                fail(f"'{key}' must be a string")
        device = {k: number(data, k, "", 1, integer=k == "sm_count") for k in DEVICE_KEYS}
        reference = data.get("reference")
        if not isinstance(reference, dict) or reference.get("dtype") not in DTYPE_BYTES:
            fail("reference must be {\"head_dim\": int, \"dtype\": one of " + ", ".join(DTYPE_BYTES) + "}")
        reference = {"head_dim": number(reference, "head_dim", "reference.", 1, True), "dtype": reference["dtype"]}
        given = data.get("kernel") if isinstance(data.get("kernel"), dict) else {}
        kernel = {k: number(data.get("kernel"), k, "kernel.") for k in KERNEL_KEYS
                  if k not in KERNEL_DEFAULTS or k in given}
        for k, stand_in in KERNEL_DEFAULTS.items():
            kernel.setdefault(k, kernel[stand_in])
        kernel = {k: kernel[k] for k in KERNEL_KEYS}
        configs = data.get("configs")
        if not isinstance(configs, list) or not configs:
            fail("configs must be a non-empty list of tile configurations")
        tiles = []
        for i, c in enumerate(configs):
            section = f"configs[{i}]."
            if not isinstance(c, dict) or c.get("memory") not in ("pointers", "tma"):
                fail(f"{section}memory must be 'pointers' or 'tma'")
            tiles.append(TileConfig(
                *(number(c, k, section, 1, True) for k in ("block_m", "block_n", "num_warps", "num_stages")),
                c["memory"], number(c, "full_tile_us", section, 1e-6), number(c, "ctas_per_sm", section, 1, True)))
        flex = {k: number(data.get("flex"), k, "flex.", 1 if k == "block" else 0) for k in FLEX_KEYS}
        flex["block"] = int(flex["block"])
        dense = data.get("dense")
        points = dense.get("points") if isinstance(dense, dict) else None
        if not isinstance(points, list) or not points:
            fail("dense.points must be a non-empty list of {\"M\", \"N\", \"ms\"}")
        points = sorted(({"M": number(p, "M", "dense.points.", 1, True), "N": number(p, "N", "dense.points.", 1, True),
                          "ms": number(p, "ms", "dense.points.", 1e-9)} for p in points),
                        key=lambda p: p["M"] * p["N"])
        dense = {"kernel": str(dense.get("kernel", "dense")), "points": points,
                 "heads": number(dense, "heads", "dense.", 1, True), "batch": number(dense, "batch", "dense.", 1, True)}
        mma = number(data, "mma_fraction", "", 0) if "mma_fraction" in data else 0.75
        if mma > 1:
            fail(f"mma_fraction must be in [0, 1], got {mma}")
        clock = number(data, "clock_mhz", "", 1) if data.get("clock_mhz") is not None else None
        return cls(data["name"], data["device"], device["sm_count"], device["smem_per_sm_kib"],
                   device["smem_per_block_kib"], device["hbm_gbps"], reference, kernel, tuple(tiles), flex, dense,
                   mma, clock, dict(data.get("fit") or {}), path)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "name": self.name, "device": self.device, "sm_count": self.sm_count,
            "clock_mhz": self.clock_mhz, "smem_per_sm_kib": self.smem_per_sm_kib,
            "smem_per_block_kib": self.smem_per_block_kib, "hbm_gbps": self.hbm_gbps,
            "reference": dict(self.reference), "mma_fraction": self.mma_fraction, "kernel": dict(self.kernel),
            "configs": [{k: v for k, v in c.__dict__.items()} for c in self.configs],
            "flex": dict(self.flex), "dense": {**self.dense, "points": [dict(p) for p in self.dense["points"]]},
            "fit": dict(self.fit),
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    # ------------------------------------------------------------------ lookups

    def tile_config(self, config: dict) -> TileConfig | None:
        """The profile's entry for exactly this config (None: not measured)."""
        for c in self.configs:
            if (c.block_m, c.block_n, c.num_warps, c.num_stages, c.memory) == (
                    config["block_m"], config["block_n"], config["num_warps"], config["num_stages"],
                    config.get("memory", "pointers")):
                return c
        return None


DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
def config_name(config: dict) -> str:
    """`128x64/w8/s3/tma` (and `/table` when table iteration is forced)."""
    text = f"{config['block_m']}x{config['block_n']}/w{config['num_warps']}/s{config['num_stages']}"
    text += f"/{config.get('memory', 'pointers')}"
    if config.get("iteration") == "table":
        text += "/table"
    return text


def parse_config(text: str) -> dict:
    """`128x64/w8/s3/tma` -> config dict (`/wW`, `/sS` and the memory path may be left out:
    4 warps, 3 stages, pointers; a trailing `/table` forces index-table iteration)."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+)(?:/w(\d+))?(?:/s(\d+))?(?:/(?:runs/)?(tma|pointers))?(/table)?", text.strip())
    if not m:
        raise PatternError(f"expected a tile config like 128x64/w8/s3/tma, got {text!r}", None,
                           "BLOCK_MxBLOCK_N[/wWARPS][/sSTAGES][/tma|/pointers][/table]")
    bm, bn, w, s, memory, table = m.groups()
    out = {"block_m": int(bm), "block_n": int(bn), "num_warps": int(w or 4), "num_stages": int(s or 3),
           "memory": memory or "pointers"}
    if table:
        out["iteration"] = "table"
    return out


def user_profile_dir() -> Path:
    """Where `patternc calibrate` writes profiles: `<patternc cache>/profiles`."""
    from ..runtime.cache import cache_dir

    return cache_dir().parent / "profiles"


def available_profiles() -> list[str]:
    names = {p.stem for p in PACKAGE_DIR.glob("*.json")}
    try:
        names |= {p.stem for p in user_profile_dir().glob("*.json")}
    except OSError:
        pass
    return sorted(names)


def find_profile(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith(".json") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise PatternError(f"no device profile at {text}", None, "run `patternc calibrate` on that GPU to make one")
        return candidate
    for directory in (PACKAGE_DIR, None):
        try:
            base = directory if directory is not None else user_profile_dir()
        except OSError:
            continue
        path = base / f"{text.lower()}.json"
        if path.is_file():
            return path
    names = available_profiles()
    guess = closest(text.lower(), names)
    raise PatternError(f"no device profile named '{text}'", None,
                       f"did you mean '{guess}'?" if guess else
                       f"profiles: {', '.join(names) or 'none'}; `patternc calibrate` measures one on this GPU")
