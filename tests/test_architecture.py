"""The structure holds: imports point down the layers, no cycles, one source for each default, public names."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Layers, bottom up; a module may import only from its own layer or below. The folders are the layers:
# guidance/ (1, the math and hooks), pipelines/ (2, diffusers pipelines and loading), tools/ and app.py (3, the
# front ends), toyworld/, fixtures/, benchmarks/ (4).


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return {"guidance": 1, "pipelines": 2, "tools": 3, "app": 3}.get(top, 4)


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in ("guidance", "pipelines", "tools", "toyworld", "fixtures", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in the file (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {
        n
        for n in names
        if n.split(".")[0] in ("guidance", "pipelines", "tools", "toyworld", "fixtures", "benchmarks", "app")
    }


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_imports_point_down_the_layers():
    """guidance <- pipelines <- tools (cli, batch, settings, console, demo; app) <- toyworld, fixtures, benchmarks."""
    violations = [
        f"{source} (layer {_layer(source)}) imports {target} (layer {_layer(target)})"
        for source, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(source)
    ]
    assert not violations, "\n".join(violations)


def test_the_wheel_ships_no_test_fixtures():
    """The shipped packages are the pyproject's list; fixtures/ and benchmarks/ are not among them, and nothing
    shipped imports them (a user's install has neither)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    shipped = {pattern.rstrip("*") for pattern in include}
    assert shipped == {"guidance", "pipelines", "tools", "toyworld"}
    leaks = [
        f"{source} imports {target}"
        for source, targets in _graph().items()
        if source.split(".")[0] in shipped | {"app"}
        for target in targets
        if target.split(".")[0] in ("fixtures", "benchmarks")
    ]
    assert not leaks, leaks


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_layer_check_can_fail(monkeypatch):
    """The checker sees an upward import (guards against a checker that never finds anything)."""
    real = _imports
    monkeypatch.setattr(
        f"{__name__}._imports",
        lambda path: real(path) | ({"toyworld.evaluator"} if path.name == "heads.py" else set()),
    )
    with pytest.raises(AssertionError, match="guidance.heads .layer 1. imports toyworld.evaluator"):
        test_imports_point_down_the_layers()


# -- one source for each default -----------------------------------------------------------------------------


def test_softpag_defaults_agree_on_every_surface():
    from guidance.config import SOFTPAG_SETTINGS, SoftPAGConfig
    from guidance.guider import SoftPAGGuidance
    from guidance.search import SearchSettings
    from pipelines.headhunter import SoftPAGMixin
    from tools.batch import DEFAULTS, FIELDS
    from tools.cli import build_parser

    config = SoftPAGConfig.call_defaults()
    signature = inspect.signature(SoftPAGMixin.__call__).parameters
    assert {k: signature[k].default for k in config} == config
    assert {k: s.default for k, s in SOFTPAG_SETTINGS.items() if k in config} == {
        k: config[k] for k in SOFTPAG_SETTINGS if k in config
    }
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate = subparsers.choices["generate"].parse_args(["a prompt"])
    keys = ("pag_scale", "pag_strength", "pag_identity", "pag_start", "pag_stop", "pag_every", "pag_branch")
    for key in keys:
        assert getattr(generate, key) == config[key], key
        assert DEFAULTS[key] == config[key], key
        assert FIELDS[key][1] == SOFTPAG_SETTINGS[key].allowed(), key
    guider = inspect.signature(SoftPAGGuidance.__init__).parameters
    for key in keys:
        assert guider[key].default == config[key], key
    search = subparsers.choices["search"].parse_args([])
    settings = SearchSettings(prompts=["p"], seeds=[0])
    assert search.pag_scale == settings.pag_scale == config["pag_scale"]
    assert search.pag_identity == settings.identity == config["pag_identity"]


def test_demo_defaults_come_from_the_config():
    from guidance.config import SoftPAGConfig

    app = pytest.importorskip("app")
    parameters = inspect.signature(app.Demo.generate).parameters
    for key, default in SoftPAGConfig.call_defaults().items():
        if key in parameters:
            assert parameters[key].default == default, key


def test_setting_errors_name_the_parameter_and_the_range():
    from guidance.config import SOFTPAG_SETTINGS, GuidanceError

    scale = SOFTPAG_SETTINGS["pag_scale"]
    for bad in (float("nan"), float("inf"), True, "3", 101):
        with pytest.raises(GuidanceError, match=r"pag_scale=.* \[-100, 100\]"):
            scale.check(bad)
    with pytest.raises(GuidanceError, match="pag_shared_prefix='no' must be True or False"):
        SOFTPAG_SETTINGS["pag_shared_prefix"].check("no")


# -- public API ----------------------------------------------------------------------------------------------


def test_public_names():
    import guidance
    import pipelines
    from guidance import HeadSearch, HeadSelection, SoftPAGConfig, StructuredConfig, get_objective  # noqa: F401
    from pipelines import HeadHunterPipeline, StructuredDiffusionPipeline  # noqa: F401

    for package in (guidance, pipelines):
        assert package.__all__ and all(
            hasattr(package, name) for name in package.__all__ if name != "UpFusionPipeline"
        )


def test_toy_objectives_arrive_through_the_registry():
    from guidance.objectives import get_objective, objective_names

    assert {"toy-quality", "toy-fidelity", "toy-dark", "toy-outlined"} <= set(objective_names())
    assert get_objective("toy-fidelity").name == "toy-fidelity"
    with pytest.raises(ValueError, match="objective='nope' is unknown"):
        get_objective("nope")


def test_assets_folder_override(monkeypatch, tmp_path):
    from tools import settings

    monkeypatch.setenv("HEADHUNTER_ASSETS", str(tmp_path))
    assert settings.assets_folder() == tmp_path
    with pytest.raises(FileNotFoundError, match="HEADHUNTER_ASSETS"):
        settings.require_assets()
    monkeypatch.delenv("HEADHUNTER_ASSETS")
    assert (settings.require_assets() / "presets").is_dir()
