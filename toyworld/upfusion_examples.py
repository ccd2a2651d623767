"""Held-out toy objects as example inputs for the UpFusion demo and CLI: six views each, PNG files and an index.

    python -m toyworld.upfusion_examples --out assets/upfusion-examples --objects 6

Each object gets a folder `<name>/` with `view-0.png` ... `view-5.png` (the first view is the reference: query
cameras are relative to it) rendered at the toy model's 32 px, and `examples.json` lists them: name, object seed
(held-out split: no model saw it), the views' azimuth and elevation, and the object's parts. The demo and CLI
read only these files (the library never imports the toy world).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toyworld.views import render_pil, sample_views, split_seeds

SIZE = 32
VIEWS = 6


def describe(obj) -> str:
    """A short name of an object from its parts, e.g. "cube" or "sphere + 2 cones"."""
    counts: dict[str, int] = {}
    for part in obj.parts:
        counts[part.shape] = counts.get(part.shape, 0) + 1
    return " + ".join(f"{n} {s}s" if n > 1 else s for s, n in counts.items())


def write_examples(out: Path, objects: int, offset: int = 500) -> list[dict]:
    """Render `objects` held-out objects (from `offset` into the split) into `out`; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for k, seed in enumerate(split_seeds("heldout", objects, offset)):
        data = sample_views(seed, VIEWS, SIZE, seed=0)
        name = f"object-{k + 1}"
        (out / name).mkdir(exist_ok=True)
        for i in range(VIEWS):
            render_pil(data["object"], data["c2w"][i], size=SIZE).save(out / name / f"view-{i}.png")
        index.append({
            "name": name,
            "label": f"{name}: {describe(data['object'])}",
            "seed": seed,
            "split": "heldout",
            "azimuth": [round(float(a), 2) for a in data["azimuth"]],
            "elevation": [round(float(e), 2) for e in data["elevation"]],
            "views": [f"{name}/view-{i}.png" for i in range(VIEWS)],
            "object": json.loads(data["object"].to_json()),
        })  # fmt: skip
    (out / "examples.json").write_text(json.dumps({"size": SIZE, "examples": index}, indent=1) + "\n")
    return index


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/upfusion-examples"))
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--offset", type=int, default=500, help="start this far into the held-out split")
    args = parser.parse_args(argv)
    for entry in write_examples(args.out, args.objects, args.offset):
        print(entry["label"])


if __name__ == "__main__":
    main()
