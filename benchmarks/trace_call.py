"""Which project files one SoftPAG call enters, traced with `sys.setprofile` (the call path docs/architecture.md
describes, measured instead of asserted).

A tiny SD3 (`fixtures.tiny.tiny_sd3`) saved and loaded as `HeadHunterPipeline`, `pag_heads="L1H0,L2H1"`, 2 steps.
Every Python call and return is recorded with its file; frames outside this repository (torch, diffusers) are
ignored. Reported: the project files entered during the whole call, those entered inside the denoising steps (from
the first denoiser forward to the VAE decoding), and how often the innermost project file changes along
the way (a reader following the call jumps between files that often).

    python benchmarks/trace_call.py [--steps 2] [--heads L1H0,L2H1] [--out results/trace_call.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("guidance", "pipelines")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fixtures/: a checkout's tiny pipelines


def project_file(filename: str) -> str | None:
    """The repository-relative path of a library file (guidance/, pipelines/), else None."""
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return str(relative) if relative.parts[0] in PACKAGES else None


class Tracer:
    """Records (event index, project file) of every call into a project file, and marks the steps."""

    def __init__(self):
        self.calls: list[str] = []
        self.in_steps = False
        self.step_calls: list[str] = []

    def __call__(self, frame, event, arg) -> None:
        if event != "call":
            return
        path = project_file(frame.f_code.co_filename)
        if path is None:
            return
        self.calls.append(path)
        if self.in_steps:
            self.step_calls.append(path)


def changes(calls: list[str]) -> int:
    """How often consecutive project calls are in different files."""
    return sum(a != b for a, b in zip(calls, calls[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--heads", default="L1H0,L2H1")
    parser.add_argument("--out", default=str(ROOT / "results" / "trace_call.json"))
    args = parser.parse_args()

    import torch

    from fixtures.tiny import tiny_sd3
    from pipelines.headhunter import HeadHunterPipeline

    with tempfile.TemporaryDirectory() as folder:
        tiny_sd3().save_pretrained(folder, safe_serialization=True)
        pipe = HeadHunterPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": "a red circle", "num_inference_steps": args.steps, "height": 32, "width": 32,
            "pag_heads": args.heads, "output_type": "np"}  # fmt: skip
    pipe(
        **call, generator=torch.Generator().manual_seed(0)
    )  # warm-up: first-use imports are not the call path

    tracer = Tracer()
    hooks = [  # the steps: from the first denoiser forward to the VAE decoding after the last step
        pipe.transformer.register_forward_pre_hook(lambda *a: setattr(tracer, "in_steps", True)),
        pipe.vae.decoder.register_forward_pre_hook(lambda *a: setattr(tracer, "in_steps", False)),
    ]
    sys.setprofile(tracer)
    try:
        pipe(**call, generator=torch.Generator().manual_seed(0))
    finally:
        sys.setprofile(None)
        for hook in hooks:
            hook.remove()
    whole, steps = Counter(tracer.calls), Counter(tracer.step_calls)
    result = {
        "call": {k: v for k, v in call.items() if k != "output_type"},
        "files_in_call": len(whole),
        "files_in_steps": len(steps),
        "file_changes_in_call": changes(tracer.calls),
        "file_changes_in_steps": changes(tracer.step_calls),
        "calls_per_file_in_call": dict(whole.most_common()),
        "calls_per_file_in_steps": dict(steps.most_common()),
    }
    print(f"one call, {args.steps} steps, pag_heads={args.heads!r}")
    print(f"project files entered: {len(whole)} in the call, {len(steps)} in the steps")
    print(
        f"file changes: {result['file_changes_in_call']} in the call, {result['file_changes_in_steps']} in the steps"
    )
    print(f"{'file':36s} {'calls (call)':>13s} {'calls (steps)':>14s}")
    for path, count in whole.most_common():
        print(f"{path:36s} {count:13d} {steps.get(path, 0):14d}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
