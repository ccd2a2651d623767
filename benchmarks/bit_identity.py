"""Bit identity: 16 fixed generations with the shipped toy models, compared byte for byte with a baseline.

Proves that a refactor leaves generation unchanged. Each generation (toy SD3, FLUX and SD1.5; plain, SoftPAG
heads, a preset, `pag_identity="image"`, `pag_strength`, a `pag_start/pag_stop` window, a batch, structured
key-value / conjunction, structured + heads) runs a few steps on the CPU from a fixed seed; its uint8 RGB pixels
are hashed (sha256) and compared with the baseline's hash. The float32 output is hashed too (shown, and checked
with --strict). The baseline stores the uint8 arrays (results/bit_identity/baseline.npz) so that a difference is
reported as a max abs pixel difference.

    python benchmarks/bit_identity.py --write   # write the baseline results/bit_identity.json (+ arrays)
    python benchmarks/bit_identity.py           # regenerate, print a table, write results/bit_identity_check.json;
                                                # exit 1 if any generation differs from the baseline

--root DIR: the folder holding assets/ (default: this repository). --baseline PATH: the baseline JSON (arrays in
the folder beside it named after it). The pipelines are imported from the repository this script sits in, and
reached only through `HeadHunterPipeline.from_pretrained` and the pipelines' public `__call__` arguments.
Sampling settings come from each model folder's toyworld.json (CFG, max_sequence_length, true_cfg_scale), with
the steps cut to keep the run short.

Determinism: CPU, float32, `torch.set_num_threads(1)` (a fixed reduction order), `torch.manual_seed(0)` and a
`torch.Generator().manual_seed(seed)` per generation. Hashes are only comparable on the same machine, torch
and diffusers versions (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = 5
SETTING_KEYS = ("num_inference_steps", "guidance_scale", "max_sequence_length", "true_cfg_scale")

ONE = "a large green square"
TWO = "a red circle and a blue square"
THREE = "a small yellow circle at the top and a large purple triangle at the bottom"

# name, model folder, seed, call arguments (beyond the model's recorded settings). "{preset}" is resolved
# against --root. Order is fixed: a generation that leaks state into the next one shows up as a difference.
GENERATIONS: list[tuple[str, str, int, dict]] = [
    ("sd3-plain", "toy-sd3", 11, dict(prompt=ONE)),
    ("sd3-heads", "toy-sd3", 11, dict(prompt=ONE, pag_heads="L0H1,L1H4")),
    ("sd3-preset-dark", "toy-sd3", 12, dict(prompt=TWO, pag_heads="{preset}")),
    (
        "sd3-heads-identity-image",
        "toy-sd3",
        13,
        dict(prompt=TWO, pag_heads="L0H1,L1H4", pag_identity="image"),
    ),
    ("sd3-heads-strength-0.5", "toy-sd3", 14, dict(prompt=TWO, pag_heads="L2H3,L5H0", pag_strength=0.5)),
    (
        "sd3-heads-window",
        "toy-sd3",
        15,
        dict(prompt=THREE, pag_heads="L0H1,L1H4", pag_scale=2.0, pag_start=0.2, pag_stop=0.6),
    ),
    ("sd3-heads-batch2", "toy-sd3", 16, dict(prompt=[ONE, TWO], pag_heads="L1H0,L7H7")),
    ("sd3-structured-kv", "toy-sd3", 17, dict(prompt=TWO, structured="key-value")),
    ("flux-plain", "toy-flux", 21, dict(prompt=ONE)),
    ("flux-heads", "toy-flux", 21, dict(prompt=ONE, pag_heads="L0H1,L2H4")),
    (
        "flux-heads-window-image",
        "toy-flux",
        22,
        dict(prompt=TWO, pag_heads="L1H3,L4H6", pag_identity="image", pag_start=0.2, pag_stop=0.8),
    ),
    ("sd15-plain", "toy-sd15", 31, dict(prompt=TWO)),
    ("sd15-kv", "toy-sd15", 31, dict(prompt=TWO, structured="key-value")),
    ("sd15-conjunction", "toy-sd15", 31, dict(prompt=TWO, structured="conjunction")),
    ("sd15-heads", "toy-sd15", 32, dict(prompt=THREE, pag_heads="L0H1,L3H2")),
    ("sd15-kv-heads", "toy-sd15", 32, dict(prompt=THREE, structured="key-value", pag_heads="L0H1,L3H2")),
]
PRESET = "assets/presets/toy-sd3-dark.json"


def model_settings(folder: Path) -> dict:
    """The call settings a toy model folder records (toyworld.json), steps cut to STEPS, at its native size;
    FLUX's true CFG needs an empty negative prompt."""
    data = json.loads((folder / "toyworld.json").read_text())
    call = {k: data[k] for k in SETTING_KEYS if k in data}
    call["num_inference_steps"] = STEPS
    call["height"], call["width"] = data["height"], data["width"]
    if "true_cfg_scale" in call:
        call["negative_prompt"] = ""
    return call


def call_arguments(root: Path) -> list[dict]:
    """Per generation: name, model (relative to root), seed, and the full call arguments (JSON-able)."""
    out = []
    for name, model, seed, extra in GENERATIONS:
        call = dict(model_settings(root / "assets" / model), **extra)
        if call.get("pag_heads") == "{preset}":
            call["pag_heads"] = PRESET
        out.append({"name": name, "model": f"assets/{model}", "seed": seed, "call": call})
    return out


def import_pipeline():
    try:
        from pipelines import HeadHunterPipeline
    except ImportError:
        from pipelines.headhunter import HeadHunterPipeline
    return HeadHunterPipeline


def generate(root: Path) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Run every generation; (records with hashes, uint8 arrays by name, environment info)."""
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.set_verbosity_error()  # the toy SD3's 1-token T5 truncation warning, load bars
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)  # single thread: a fixed reduction order, so reruns are bit identical
    torch.manual_seed(0)
    HeadHunterPipeline = import_pipeline()
    module = sys.modules[HeadHunterPipeline.__module__]
    pipes: dict = {}
    records, arrays = [], {}
    for item in call_arguments(root):
        model = item["model"]
        if model not in pipes:
            pipes.clear()  # one model in memory at a time; generations are grouped by model
            pipe = HeadHunterPipeline.from_pretrained(str(root / model), dtype=torch.float32).to("cpu")
            pipe.set_progress_bar_config(disable=True)
            pipes[model] = pipe
        call = dict(item["call"])
        if call.get("pag_heads") == PRESET:
            call["pag_heads"] = str(root / PRESET)
        start = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(item["seed"])
        images = pipes[model](generator=generator, output_type="np", **call).images
        seconds = time.perf_counter() - start
        images = np.asarray(images, dtype=np.float32)
        pixels = (images * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil makes PIL images
        arrays[item["name"]] = pixels
        records.append(
            dict(
                item,
                sha256=hashlib.sha256(pixels.tobytes()).hexdigest(),
                float_sha256=hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
                shape=list(pixels.shape),
                seconds=round(seconds, 3),
            )
        )
        print(f"{item['name']:26s} {records[-1]['sha256'][:16]}  {seconds:.2f} s", flush=True)
    info = dict(
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        numpy=np.__version__,
        threads=torch.get_num_threads(),
        pipeline_module=module.__name__,
        pipeline_file=str(Path(module.__file__).resolve()),
        **git_state(Path(module.__file__).resolve().parent),
    )
    return records, arrays, info


def git_state(folder: Path) -> dict:
    """The commit of the code that ran and whether its tracked Python files had uncommitted changes."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *cmd], capture_output=True, text=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "*.py")
        return dict(code_commit=git("rev-parse", "HEAD") or None, code_dirty=bool(dirty))
    except OSError:
        return dict(code_commit=None, code_dirty=None)


def arrays_path(baseline: Path) -> Path:
    return baseline.with_suffix("") / "baseline.npz"


def write_baseline(args, records, arrays, info, seconds: float) -> None:
    baseline = Path(args.baseline)
    baseline.parent.mkdir(parents=True, exist_ok=True)
    npz = arrays_path(baseline)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **arrays)
    data = dict(
        description=__doc__.splitlines()[0],
        steps=STEPS,
        environment=info,
        wall_seconds=round(seconds, 2),
        arrays=f"{npz.parent.name}/{npz.name}",  # beside the baseline JSON
        generations=records,
    )
    baseline.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {baseline} and {npz} ({npz.stat().st_size / 1024:.0f} KiB), {seconds:.1f} s")


def check(args, records, arrays, info, seconds: float) -> int:
    baseline = Path(args.baseline)
    base = json.loads(baseline.read_text())
    npz = arrays_path(baseline)
    stored = dict(np.load(npz)) if npz.is_file() else {}
    by_name = {g["name"]: g for g in base["generations"]}
    rows, failed = [], 0
    for rec in records:
        old = by_name.get(rec["name"])
        same = old is not None and old["sha256"] == rec["sha256"] and old["shape"] == rec["shape"]
        same_float = old is not None and old.get("float_sha256") == rec["float_sha256"]
        same_call = old is not None and old["call"] == rec["call"] and old["seed"] == rec["seed"]
        ref = stored.get(rec["name"])
        if ref is None:
            diff = None
        elif ref.shape != arrays[rec["name"]].shape:
            diff = "shape"
        else:
            diff = int(np.abs(ref.astype(np.int16) - arrays[rec["name"]].astype(np.int16)).max())
        ok = same and same_call and (same_float or not args.strict)
        failed += not ok
        rows.append(
            dict(
                name=rec["name"],
                baseline_sha256=old["sha256"] if old else None,
                sha256=rec["sha256"],
                identical=same,
                float_identical=same_float,
                same_call=same_call,
                max_abs_diff=diff,
                ok=ok,
            )
        )
    missing = sorted(set(by_name) - {r["name"] for r in records})
    failed += len(missing)
    print(f"\n{'name':26s} | {'baseline sha':16s} | {'now sha':16s} | identical | float | max abs diff")
    for r in rows:
        note = "" if r["same_call"] else "  (call arguments changed)"
        print(
            f"{r['name']:26s} | {(r['baseline_sha256'] or '-')[:16]:16s} | {r['sha256'][:16]} | "
            f"{'yes' if r['identical'] else 'NO':9s} | {'yes' if r['float_identical'] else 'no':5s} | "
            f"{r['max_abs_diff']}{note}"
        )
    for name in missing:
        print(f"{name:26s} | in the baseline, not generated")
    for key in ("platform", "torch", "diffusers", "threads"):
        if base["environment"].get(key) != info.get(key):
            print(
                f"note: {key} differs from the baseline's: {base['environment'].get(key)} -> {info.get(key)}"
            )
    out = Path(args.out) if args.out else baseline.with_name(baseline.stem + "_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        baseline=str(baseline),
        environment=info,
        wall_seconds=round(seconds, 2),
        strict=args.strict,
        all_identical=failed == 0,
        missing=missing,
        generations=rows,
    )
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{len(rows) - failed + len(missing)}/{len(by_name)} identical, {seconds:.1f} s; wrote {out}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the baseline instead of checking it")
    parser.add_argument("--root", default=str(REPO), help="folder holding assets/ (default: this repository)")
    parser.add_argument("--baseline", default=str(REPO / "results" / "bit_identity.json"))
    parser.add_argument("--out", default=None, help="check report (default: <baseline>_check.json)")
    parser.add_argument("--strict", action="store_true", help="fail on a float32 output difference too")
    args = parser.parse_args()
    start = time.perf_counter()
    records, arrays, info = generate(Path(args.root).resolve())
    seconds = time.perf_counter() - start
    if args.write:
        write_baseline(args, records, arrays, info, seconds)
        return 0
    return check(args, records, arrays, info, seconds)


if __name__ == "__main__":
    sys.exit(main())
