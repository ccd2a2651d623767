"""The stage-1 gate of the toy UpFusion: UpSRT must use its input views before a diffusion model is trained on it.

    python -m benchmarks.upfusion_gate --model /path/to/OUT/checkpoint     # or a pipeline folder

Passes (exit 0) when, on held-out objects (benchmarks.upfusion_toy's references and UpSRT rows, paired per
object, 95% bootstrap intervals):
1. UpSRT's PSNR beats the mean of the N input images at every N = 1, 2, 3, 6 (the interval above 0), and
2. UpSRT gains at least `--min-gain` dB (default 1) from N = 1 to N = 6, with the interval above 0.
Otherwise it prints which condition failed and exits 1. Writes the benchmark's JSON (`--out`) with the verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.upfusion_toy import VIEW_COUNTS, parse_args, run


def verdict(paired: dict, min_gain: float) -> list[str]:
    """The failed conditions (empty: the gate passes)."""
    failures = []
    for n in VIEW_COUNTS:
        cell = paired[f"upsrt - mean_of_inputs/N={n}"]["psnr"]
        if cell["low"] <= 0:
            failures.append(
                f"N={n}: UpSRT - mean of inputs = {cell['mean']:+.3f} dB [{cell['low']:+.3f}, {cell['high']:+.3f}]"
                " (needs the interval above 0)"
            )
    gain = paired["upsrt: N=6 - N=1"]["psnr"]
    if gain["mean"] < min_gain or gain["low"] <= 0:
        failures.append(
            f"UpSRT N=6 - N=1 = {gain['mean']:+.3f} dB [{gain['low']:+.3f}, {gain['high']:+.3f}]"
            f" (needs >= {min_gain:+.1f} dB with the interval above 0)"
        )
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the references and UpSRT rows, print the verdict, return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    min_gain = 1.0
    if "--min-gain" in argv:
        i = argv.index("--min-gain")
        min_gain = float(argv[i + 1])
        del argv[i : i + 2]
    args = parse_args([*argv, "--no-diffusion", "--counts", ",".join(map(str, VIEW_COUNTS))])
    if args.out == "results/upfusion_toy.json":
        args.out = "results/upfusion_gate.json"
    args.command = "python -m benchmarks.upfusion_gate " + " ".join(argv)
    result = run(args)
    failures = verdict(result["paired_differences"], min_gain)
    result["gate"] = {"min_gain_db": min_gain, "passed": not failures, "failures": failures}
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    if failures:
        print("GATE FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("GATE PASSED: UpSRT beats the mean of its inputs at every N and gains >= "
          f"{min_gain:g} dB from N = 1 to 6.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
