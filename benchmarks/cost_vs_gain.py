"""Cost against gain of the cheaper SoftPAG settings: the toy sweep's paired gains beside the speed benchmark's
step-time ratios, and how much of the every-step gain each setting keeps.

    python benchmarks/cost_vs_gain.py [--sweep results/toyworld/cost-sd3.json]
        [--speed results/softpag_speed_cost.json] [--out results/cost_vs_gain.json]

Gains are paired differences against the unguided images of the same 800 pairs, 95% bootstrap intervals
(`guidance.stats.paired_difference`); "kept" is a setting's mean gain over the every-step mean gain, with a
bootstrap interval over the same pairs (both resampled together). Cost is CPU time per step over CFG's from the
speed benchmark (a loaded 2-core CPU: the CPU-time column, not wall time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from guidance.stats import paired_difference

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("score", "binding", "correct")
# sweep row suffix -> speed benchmark variant
SPEED_NAMES = {"": "cfg+softpag", " every2": "cfg+softpag-every2", " every3": "cfg+softpag-every3",
               " every4": "cfg+softpag-every4", " steps0-0.3": "cfg+softpag-window0-0.3",
               " uncond": "cfg+softpag-uncond", " every2 uncond": "cfg+softpag-uncond-every2"}  # fmt: skip


def kept(setting: np.ndarray, every_step: np.ndarray, baseline: np.ndarray, seed: int = 0) -> tuple:
    """(mean ratio, low, high): the setting's mean gain over the every-step mean gain, pairs resampled together."""
    rng = np.random.default_rng(seed)
    a, b = setting - baseline, every_step - baseline
    ratio = a.mean() / b.mean()
    draws = rng.integers(0, len(a), size=(2000, len(a)))
    num, den = a[draws].mean(axis=1), b[draws].mean(axis=1)
    # a resample whose every-step gain is exactly 0 has no ratio (about 1 in 1000 here): left out of the interval
    ratios = num[den != 0] / den[den != 0]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(ratio), float(low), float(high)


def speed_ratios(path: Path) -> dict[str, float]:
    """{variant: CPU seconds per step over CFG's} from softpag_speed's JSON (empty if it is missing)."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    rows = rows.get("rows", rows.get("variants", rows))
    found = {}
    for row in rows if isinstance(rows, list) else []:
        name, value = row.get("variant"), row.get("cpu_vs_base")
        if name is not None and value is not None:
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=str(ROOT / "results" / "toyworld" / "cost-sd3.json"))
    parser.add_argument("--speed", default=str(ROOT / "results" / "softpag_speed_cost.json"))
    parser.add_argument("--every-step", default="L2H4,L3H4,L4H7,L7H2")
    parser.add_argument("--out", default=str(ROOT / "results" / "cost_vs_gain.json"))
    args = parser.parse_args()
    sweep = json.loads(Path(args.sweep).read_text())
    values = sweep["values"]
    baseline = values[next(n for n in values if n.startswith("unguided"))]
    full = values[args.every_step]
    speed = speed_ratios(Path(args.speed))
    rows = []
    header = (
        "| setting | x CFG (CPU) | "
        + " | ".join(f"{m} gain [95%]" for m in METRICS)
        + " | binding kept [95%] |"
    )
    print(header + "\n|" + "---|" * (len(METRICS) + 3))
    for name, row in values.items():
        if not name.startswith(args.every_step):
            continue
        suffix = name[len(args.every_step) :]
        gains = {m: paired_difference(row[m], baseline[m]) for m in METRICS}
        share = kept(np.asarray(row["binding"]), np.asarray(full["binding"]), np.asarray(baseline["binding"]))
        cost = speed.get(SPEED_NAMES.get(suffix, ""))
        rows.append({"setting": suffix.strip() or "every step", "x_cfg_cpu": cost, "gains": gains,
                     "binding_kept": share, "pairs": len(row["binding"])})  # fmt: skip
        cells = " | ".join(f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" for g in gains.values())
        shown = "-" if cost is None else f"{cost:.2f}"
        print(
            f"| {rows[-1]['setting']} | {shown} | {cells} | {share[0]:.0%} [{share[1]:.0%}, {share[2]:.0%}] |"
        )
    Path(args.out).write_text(
        json.dumps({"sweep": args.sweep, "speed": args.speed, "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
