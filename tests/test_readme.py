"""The README's examples stay true: every `headhunter` command parses with today's CLI, every shipped preset or
asset it names exists, and every Python block compiles and imports only names that exist."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from tools.cli import build_parser
from tools.settings import ASSETS, PRESETS

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def _commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("headhunter "):
                commands.append(shlex.split(line.replace("<model>", "some/model"))[1:])
    return commands


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: " ".join(argv[:2]))
def test_cli_examples_parse(argv):
    args = build_parser().parse_args(argv)
    heads = getattr(args, "pag_heads", None)
    if heads and not re.search(r"L\d+H\d+", heads):
        assert (PRESETS / f"{heads}.json").is_file(), f"README names preset {heads!r}, which is not shipped"


def test_there_are_examples():
    assert len(_commands()) >= 5 and len(_blocks("python")) >= 3


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_compile_and_import_real_names(index):
    source = _blocks("python")[index]
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("guidance", "pipelines")
        ):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}"


def test_shipped_assets_the_readme_names_exist():
    for name in re.findall(r"assets/([\w./-]+)", README.read_text()):
        if not any(ch in name for ch in "*<"):
            assert (ASSETS / name.rstrip(".,)`")).exists(), f"README names assets/{name}"
