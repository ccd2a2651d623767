"""The reliability matrix: every bad-input case of tests/test_fuzz.py, classified, counted per surface.

    python benchmarks/reliability_matrix.py      # prints the table, writes results/reliability_matrix.json

Outcomes: clear (our error, naming the input, no traceback, nothing written, processors restored), unclear (an
error that does not say what was wrong), silently accepted (no error), crash (a traceback or a foreign exception).
The demo's HTTP API cases (tests/test_app_fuzz.py) are posted to the demo launched on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _test_module(name: str):
    """tests/<name>.py as a module (its case tables and classifiers)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fuzz_module():
    """tests/test_fuzz.py as a module."""
    return _test_module("test_fuzz")


def _classified(fuzz, root: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{surface: [(case, outcome, message)]} for the Python API, the CLI and batch job files."""
    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import HeadHunterPipeline

    pipe = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    pipe.set_progress_bar_config(disable=True)
    model = root / "tiny-sd3"
    pipe.save_pretrained(model, safe_serialization=True)
    results: dict[str, list] = {"Python API": [], "CLI": [], "batch": []}
    runs = [
        ("Python API", fuzz.PYTHON_CASES, lambda case, tmp: fuzz.classify_python(pipe, case, tmp)),
        ("CLI", fuzz.CLI_CASES, lambda case, tmp: fuzz.classify_cli(case, str(model), tmp)),
        ("batch", fuzz.BATCH_CASES, fuzz.classify_batch),
    ]
    runs += _input_runs(root)
    for surface, cases, classify in runs:
        for case in cases:
            tmp = root / f"{surface.replace(' ', '-')}-{len(results[surface])}"
            tmp.mkdir()
            outcome, message = classify(case, tmp)
            results[surface].append((case.name, outcome, " ".join(message.split())[-300:]))
    results["demo HTTP API"] = _demo_http_api(str(model), root)
    return results


# -- Issue 27: the demo's HTTP API (tests/test_app_fuzz.py), the demo launched on 127.0.0.1 ---------------------


def _demo_http_api(model: str, root: Path) -> list[tuple[str, str, str]]:
    """(case, outcome, message) of every payload of tests/test_app_fuzz.py's `demo_cases`, posted as a browser
    posts it to the demo on `model` (conftest's `launch_demo`), with the files of `upload_files`."""
    import logging

    logging.getLogger("headhunter.app").setLevel(logging.ERROR)  # not one "refused: ..." line per case
    conftest, app_fuzz = _test_module("conftest"), _test_module("test_app_fuzz")
    url, _, app = conftest.launch_demo(model)
    try:
        files = app_fuzz.upload_files(url, root)
        rows = []
        for name, event, data, expected in app_fuzz.demo_cases():
            outcome, message = app_fuzz.classify_api(url, event, data, expected, files)
            rows.append((name, outcome, " ".join(str(message).split())[-300:]))
        Path(files["link"]).unlink()
    finally:
        app.close()
    return rows


# -- Issue 27: non-values, bounds and `views` outputs (tests/test_reliability_inputs.py) ------------------------


def _input_runs(root: Path) -> list[tuple]:
    """(surface, cases, classify) of tests/test_reliability_inputs.py: SoftPAG, structured and UpFusion calls count
    as the Python API, `headhunter views` lines as the CLI; each case named by its table."""
    import dataclasses

    from fixtures.tiny import TINY_PIPELINES
    from pipelines.headhunter import HeadHunterPipeline, StructuredDiffusionPipeline
    from pipelines.upfusion import build_upfusion

    spec = importlib.util.spec_from_file_location(
        "test_reliability_inputs", ROOT / "tests" / "test_reliability_inputs.py"
    )
    inputs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = inputs
    spec.loader.exec_module(inputs)
    sd3 = HeadHunterPipeline.from_pipe(TINY_PIPELINES["sd3"]())
    sd15 = StructuredDiffusionPipeline.from_pipe(TINY_PIPELINES["sd15"]())
    upfusion = build_upfusion("tiny", seed=0)
    upfusion.save_pretrained(root / "tiny-upfusion")
    for pipe in (sd3, sd15, upfusion):
        pipe.set_progress_bar_config(disable=True)

    def named(table: str, cases: list) -> list:
        return [dataclasses.replace(case, name=f"{table}: {case.name}") for case in cases]

    return [
        ("Python API", named("softpag", inputs.SOFTPAG_CASES), lambda c, t: inputs.classify_softpag(sd3, c, t)),
        ("Python API", named("structured", inputs.STRUCTURED_CASES),
         lambda c, t: inputs.classify_structured(sd15, c, t)),
        ("Python API", named("upfusion", inputs.UPFUSION_CASES),
         lambda c, t: inputs.classify_upfusion(upfusion, c, t)),
        ("CLI", named("views", inputs.VIEWS_CASES),
         lambda c, t: inputs.classify_views(c, str(root / "tiny-upfusion"), t)),
    ]  # fmt: skip


def main() -> None:
    fuzz = _fuzz_module()
    with tempfile.TemporaryDirectory() as folder:
        results = _classified(fuzz, Path(folder))
    print(f"| surface | cases | {' | '.join(fuzz.OUTCOMES)} |")
    print("|---|---|" + "---|" * len(fuzz.OUTCOMES))
    table = {}
    for surface, rows in results.items():
        counts = Counter(outcome for _, outcome, _ in rows)
        table[surface] = {outcome: counts.get(outcome, 0) for outcome in fuzz.OUTCOMES}
        print(
            f"| {surface} | {len(rows)} | " + " | ".join(str(table[surface][o]) for o in fuzz.OUTCOMES) + " |"
        )
    for surface, rows in results.items():
        for name, outcome, message in rows:
            if outcome != "clear":
                print(f"{surface}: {name}: {outcome}: {message[-160:]}")
    out = ROOT / "results" / "reliability_matrix.json"
    out.parent.mkdir(exist_ok=True)
    cases = {s: [{"case": n, "outcome": o, "message": m} for n, o, m in rows] for s, rows in results.items()}
    out.write_text(json.dumps({"counts": table, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
