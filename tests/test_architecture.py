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
# Every default and range of SoftPAG, structured attention, the head search and UpFusion, on every surface that
# exposes it: the pipelines' signatures, the CLI's parsers, the batch job keys, the demo's inputs, the guider, the
# search's settings. A literal that drifts from `guidance.config` fails here.


def _parser(command: str) -> argparse.ArgumentParser:
    """The CLI's parser of `command`, built from tools/cli.py."""
    from tools.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest)


def _signature(function) -> dict:
    """{parameter: default} of the parameters that have one."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _within(narrow, wide) -> bool:
    """`narrow` is `wide` (same name, kind and help) over a part of its range: a surface's derived restriction."""
    return (narrow.name, narrow.kind, narrow.help) == (wide.name, wide.kind, wide.help) and (
        wide.low <= narrow.low <= narrow.high <= wide.high
    )


@pytest.fixture(scope="module")
def demo_inputs(loaded, tiny_folder):
    """The demo built around a tiny SD3 (not launched): (app module, Demo, {elem_id or label: component})."""
    app = pytest.importorskip("app")
    demo = app.Demo(loaded("sd3"), tiny_folder("sd3"))
    blocks = app.build_app(demo)
    components = {}
    for block in blocks.blocks.values():
        for key in (getattr(block, "elem_id", None), getattr(block, "label", None)):
            if key:
                components.setdefault(key, block)
    return app, demo, components


def test_softpag_defaults_agree_on_every_surface():
    from guidance.config import SOFTPAG_SETTINGS, SoftPAGConfig
    from guidance.guider import SoftPAGGuidance
    from guidance.heads import GROUP_SCALE, HEAD_STRENGTH
    from guidance.search import SearchSettings
    from pipelines.headhunter import SoftPAGMixin
    from tools.batch import DEFAULTS, FIELDS
    from tools.cli import PAG_FLAGS

    config = SoftPAGConfig.call_defaults()
    signature = _signature(SoftPAGMixin.__call__)
    assert {k: signature[k] for k in config} == config
    assert {k: s.default for k, s in SOFTPAG_SETTINGS.items()} == {k: config[k] for k in SOFTPAG_SETTINGS}
    generate = _parser("generate")
    parsed = generate.parse_args(["a prompt"])
    assert {s.name for s in PAG_FLAGS} == set(SOFTPAG_SETTINGS) - {"pag_shared_prefix"}
    for setting in PAG_FLAGS:
        key = setting.name
        assert getattr(parsed, key) == config[key], key
        assert DEFAULTS.get(key) == config[key], key
        assert FIELDS[key][1] == setting.allowed(), key
        if setting.kind == "choice":
            assert tuple(_action(generate, key).choices) == setting.choices, key
    guider = _signature(SoftPAGGuidance.__init__)
    assert {k: guider[k] for k in config if k in guider} == {k: config[k] for k in config if k in guider}
    assert set(config) - set(guider) == {
        "pag_shared_prefix",
        "pag_heads_per_image",
    }  # one selection, no prefix
    search = _parser("search").parse_args([])
    settings = SearchSettings(prompts=["p"], seeds=[0])
    assert search.pag_scale == settings.pag_scale == config["pag_scale"]
    assert search.pag_identity == settings.identity == config["pag_identity"]
    for setting, shared in (
        (SOFTPAG_SETTINGS["pag_scale"], GROUP_SCALE),
        (SOFTPAG_SETTINGS["pag_strength"], HEAD_STRENGTH),
    ):
        assert (setting.kind, setting.low, setting.high) == (
            shared.kind,
            shared.low,
            shared.high,
        )  # a selection's


def test_demo_defaults_come_from_the_config(demo_inputs):
    from guidance.config import GENERATION_SETTINGS, SOFTPAG_SETTINGS, SoftPAGConfig

    app, _, components = demo_inputs
    parameters = _signature(app.Demo.generate)
    for key, default in SoftPAGConfig.call_defaults().items():
        if key in parameters:
            assert parameters[key] == default, key
    sliders = {"Default strength u": "pag_strength", "Start": "pag_start", "Stop": "pag_stop",
               "Every k steps": "pag_every", "Head guidance w": "pag_scale"}  # fmt: skip
    for label, key in sliders.items():
        slider, setting = components[label], SOFTPAG_SETTINGS[key]
        assert setting.low <= slider.minimum <= slider.maximum <= setting.high, label
        if key != "pag_scale":  # w: the default preset's
            assert slider.value == setting.default, label
    for label, key in {"Identity": "pag_identity", "Perturbed branch": "pag_branch"}.items():
        radio, setting = components[label], SOFTPAG_SETTINGS[key]
        assert [c[1] for c in radio.choices] == list(setting.choices) and radio.value == setting.default, (
            label
        )
    for name in ("seed", "structured-seed", "views-seed"):
        assert components[name].value == GENERATION_SETTINGS["seed"].default, name
    assert _within(app.DEMO_CFG, GENERATION_SETTINGS["guidance_scale"])
    assert (
        app.DEMO_SEED.high == GENERATION_SETTINGS["seed"].high and app.DEMO_SEED.low == -1
    )  # -1: a new seed
    assert _within(app.Limits().steps(), GENERATION_SETTINGS["num_inference_steps"])


def test_structured_defaults_agree_on_every_surface(demo_inputs):
    from guidance.config import STRUCTURED_SETTINGS, StructuredConfig
    from pipelines.structured import StructuredMixin
    from tools.batch import DEFAULTS, FIELDS

    defaults = {k: s.default for k, s in STRUCTURED_SETTINGS.items()}
    signature = _signature(StructuredMixin.__call__)
    assert {k: signature[k] for k in defaults} == defaults
    config = StructuredConfig()
    assert (config.mode, config.start, config.stop) == tuple(defaults.values())
    assert config.modes == tuple(c for c in STRUCTURED_SETTINGS["structured"].choices if c is not None)
    assert _parser("generate").parse_args(["a prompt"]).structured == defaults["structured"]
    assert DEFAULTS["structured"] == defaults["structured"]
    assert FIELDS["structured"][1] == STRUCTURED_SETTINGS["structured"].allowed()
    _, _, components = demo_inputs
    shown = [c[1] for c in components["structured-mode"].choices]
    assert set(shown) - {"off"} <= set(config.modes)


def test_search_defaults_agree_on_every_surface(demo_inputs):
    from guidance.config import SEARCH_SETTINGS
    from guidance.search import SEARCH_PROFILES, SearchProfile, SearchSettings
    from tools.cli import SEARCH_FLAGS

    fields = {"strength": "search_strength"}  # SearchSettings' name: the setting's
    settings = SearchSettings(prompts=["p"], seeds=[0])
    for name in (
        "k",
        "rounds",
        "batch",
        "size",
        "steps",
        "guidance_scale",
        "validation",
        "early_stop",
        "strength",
    ):
        assert getattr(settings, name) == SEARCH_SETTINGS[fields.get(name, name)].default, name
    profile = SearchProfile()
    for name in ("k", "rounds", "validation", "early_stop", "strength"):
        assert getattr(profile, name) == SEARCH_SETTINGS[fields.get(name, name)].default, name
    assert SEARCH_PROFILES["ours"]["sd3"] == profile
    search = _parser("search")
    parsed = search.parse_args([])
    for setting in SEARCH_FLAGS:  # the profile's / model's where the CLI leaves None
        default = setting.default if setting.name in ("search_strength", "use_strength", "batch") else None
        assert getattr(parsed, setting.name) == default, setting.name
        assert _action(search, setting.name).type is {"integer": int, "number": float}[setting.kind]
    assert {s.name for s in SEARCH_FLAGS} == set(SEARCH_SETTINGS) - {"steps", "guidance_scale", "validation",
                                                                    "early_stop"}  # fmt: skip
    app, _, components = demo_inputs
    assert _within(app.SEARCH_K, SEARCH_SETTINGS["k"]) and _within(
        app.SEARCH_ROUNDS, SEARCH_SETTINGS["rounds"]
    )
    assert components["search-k"].value == SEARCH_SETTINGS["k"].default
    assert components["search-rounds"].value == SEARCH_SETTINGS["rounds"].default
    from tools.demo_model import SEARCH_USE_STRENGTH

    assert SEARCH_USE_STRENGTH == SEARCH_SETTINGS["use_strength"].default


def test_upfusion_defaults_agree_on_every_surface(demo_inputs, tmp_path):
    from guidance.config import GENERATION_SETTINGS, UPFUSION_SETTINGS
    from pipelines import upfusion
    from tools import cli
    from tools import demo as tools

    settings = {k: s.default for k, s in UPFUSION_SETTINGS.items()}
    call = _signature(upfusion.UpFusionPipeline.__call__)
    shared = set(call) & set(settings)
    assert shared == {"num_inference_steps", "guidance_scale", "upsrt_only", "scene_attention", "cfg_query_rays",
                      "return_dict"}  # fmt: skip
    assert {k: call[k] for k in shared} == {k: settings[k] for k in shared}
    orbit = _signature(upfusion.orbit)
    assert (orbit["frames"], orbit["elevation"], orbit["frame_ms"]) == (
        settings["frames"], settings["orbit_elevation"], settings["frame_ms"])  # fmt: skip
    # the pipeline's checks: each range's ends taken, one step beyond refused
    steps, cfg, elevation = (
        UPFUSION_SETTINGS[k] for k in ("num_inference_steps", "guidance_scale", "elevation")
    )
    upfusion.check_sampling(int(steps.high), cfg.high, "pil", 10**6)
    upfusion.check_sampling(int(steps.low), cfg.low, "pil", 10**6)
    for bad in (
        (steps.high + 1, cfg.high),
        (steps.low - 1, cfg.low),
        (1, cfg.high + 0.5),
        (1, cfg.low - 0.5),
    ):
        with pytest.raises(ValueError):
            upfusion.check_sampling(*bad, "pil", 10**6)
    upfusion.query_poses([(0, elevation.high), (0, elevation.low)], 2.0)
    with pytest.raises(ValueError, match="elevation"):
        upfusion.query_poses([(0, elevation.high + 0.5)], 2.0)
    assert UPFUSION_SETTINGS["views"].high == upfusion.MAX_VIEWS
    # the CLI
    views = _parser("views")
    parsed = views.parse_args(["image.png"])
    assert parsed.orbit_elevation == settings["orbit_elevation"]
    assert (parsed.num_inference_steps, parsed.guidance_scale) == (settings["num_inference_steps"],
                                                                   settings["guidance_scale"])  # fmt: skip
    assert parsed.seed == GENERATION_SETTINGS["seed"].default
    assert cli.FRAMES is UPFUSION_SETTINGS["frames"] and cli.ELEVATION is UPFUSION_SETTINGS["elevation"]
    assert cli.VIEWS is UPFUSION_SETTINGS["views"] and _within(cli.AZIMUTH, UPFUSION_SETTINGS["azimuth"])
    for value, allowed in ((elevation.high, True), (elevation.high + 0.5, False)):
        flags = views.parse_args(["image.png", "--azimuth", "10", "--elevation", str(value)])
        if allowed:
            assert cli._view_cameras(flags) == [(10.0, value)]
        else:
            with pytest.raises(cli.CLIError, match="--elevation"):
                cli._view_cameras(flags)
    # the demo
    for name, setting in tools.VIEW_SETTINGS.items():
        assert _within(setting, UPFUSION_SETTINGS[name]), name
    assert tools.MAX_FRAMES == tools.VIEW_SETTINGS["frames"].high
    assert tools.parse_cameras(f"0, {elevation.high:g}") == [(0.0, elevation.high)]
    with pytest.raises(tools.DemoInputError, match="elevation"):
        tools.parse_cameras(f"0, {elevation.high + 0.5:g}")
    assert _signature(tools.turntable_gif)["frame_ms"] == settings["frame_ms"]
    app, _, components = demo_inputs
    tab = app.NovelViews()
    shown = {
        "views-frames": "frames",
        "views-elevation": "orbit_elevation",
        "views-steps": "num_inference_steps",
    }
    for elem_id, name in shown.items():
        assert components[elem_id].value == tools.VIEW_SETTINGS[name].default, elem_id
    assert components["views-cfg"].minimum == UPFUSION_SETTINGS["guidance_scale"].low
    if not tab.unavailable():
        preset = upfusion.PRESETS[
            upfusion.DEFAULT_PRESET
        ]  # the toy folder records no preset: the default one
        assert components["views-cfg"].value == tab.default_cfg() == preset["guidance_scale"]


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
