"""Loading helpers shared by the pipelines: which optional components a saved folder leaves out, a model folder
checked component by component before (and explained after) diffusers loads it, and the call a folder recommends
(`folder_recommendations`: the defaults of a loaded pipeline's `__call__`)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from guidance.config import CALL_SETTINGS, GENERATION_SETTINGS, GuidanceError, Setting
from guidance.heads import shown_path
from guidance.strictjson import loads_strict, refused_values

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

T = TypeVar("T")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_CONFIG_BYTES = (
    16 * 1024 * 1024
)  # model_index.json and component configs (tokenizer.json is not read here)
RESAVE = "save the pipeline again with save_pretrained(safe_serialization=True) or download it again"


class ModelFolderError(GuidanceError):
    """A model folder that cannot be loaded: the message names the folder, the component and what to do."""


def model_index(path: str | os.PathLike, **hub_kwargs) -> dict:
    """Read `model_index.json` from a local folder (`read_model_index`) or, on a machine with a hub, a repo id."""
    if Path(path).exists():
        return read_model_index(path)
    if Path(path).is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") > 1:
        raise ModelFolderError(
            f"pretrained_model_name_or_path={str(path)!r}: no such folder (nor a hub id); pass the folder that "
            "holds model_index.json"
        )
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(str(path), "model_index.json", **hub_kwargs)).read_text())


def absent_components(cls: type[DiffusionPipeline], index: dict) -> dict[str, None]:
    """Components of `cls` that the saved pipeline does not have (e.g. SD3 saved without T5), as None."""
    expected, _ = cls._get_signature_keys(cls)
    return {name: None for name in expected if index.get(name) in (None, [None, None])}


# -------------------------------------------------------------------------------------------------------------
# A model folder, checked before loading: files present, JSON readable, classes known, safetensors headers
# -------------------------------------------------------------------------------------------------------------


def read_model_index(path: str | os.PathLike) -> dict:
    """A local pipeline folder's model_index.json: the folder exists and is one, the file is there, is strict
    JSON and names the pipeline class; else ModelFolderError naming the folder and what to do."""
    folder = Path(path).expanduser()
    where = f"model folder {shown_path(path)}"
    if not folder.exists():
        raise ModelFolderError(f"{where}: no such folder; pass the folder that holds model_index.json")
    if not folder.is_dir():
        raise ModelFolderError(
            f"{where} is a file, not a folder; pass the folder that holds model_index.json"
        )
    if not (folder / "model_index.json").is_file():
        raise ModelFolderError(
            f"{where} is a folder without model_index.json (not a diffusers pipeline folder; empty, or a "
            "component's folder); pass the folder that holds model_index.json"
        )
    index = _json_file(folder / "model_index.json", where, "model_index.json")
    if not isinstance(index.get("_class_name"), str):
        raise ModelFolderError(
            f"{where}: model_index.json has no '_class_name' naming the pipeline class; {RESAVE}"
        )
    return index


def check_components(path: str | os.PathLike, index: dict) -> None:
    """Check every component of a local pipeline folder without loading weights. Each problem is a
    ModelFolderError naming the folder, the component and what to do: an unknown library or class, a missing
    component folder, config or weights file, a config that is not JSON, a safetensors file that is truncated or
    corrupt, only pickle weights (never unpickled), a tokenizer without its vocabulary files."""
    where = f"model folder {shown_path(path)}"
    for name, value in index.items():
        # a bool or number is a pipeline option (SD's requires_safety_checker, SDXL's force_zeros_for_empty_prompt)
        if not name.startswith("_") and not isinstance(value, bool | int | float):
            _check_component(Path(path).expanduser(), where, name, value)


def _json_file(path: Path, where: str, what: str) -> dict:
    """A JSON object file of a model folder, strictly read; else ModelFolderError naming `what`."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ModelFolderError(
                f"{where}: {what} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; {RESAVE}"
            )
        value = loads_strict(data.decode("utf-8"))
    except OSError as error:
        raise ModelFolderError(f"{where}: {what} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ModelFolderError(f"{where}: {what} is not UTF-8 text; {RESAVE}") from None
    except json.JSONDecodeError as error:
        raise ModelFolderError(
            f"{where}: {what} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            f"{RESAVE}"
        ) from None
    except RecursionError:
        raise ModelFolderError(f"{where}: {what} is not valid JSON (nested too deeply); {RESAVE}") from None
    problems = refused_values(value)
    if not isinstance(value, dict) or problems:
        why = "; ".join(problems[:3]) or f"a JSON {type(value).__name__}, not an object"
        raise ModelFolderError(f"{where}: {what}: {why}; {RESAVE}")
    return value


def _component_class(where: str, name: str, value: Any) -> type | None:
    """The class model_index.json names for component `name` (None for an absent one)."""
    if value in (None, [None, None]):
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ModelFolderError(
            f"{where}: model_index.json: component {name!r} must be [library, class], got "
            f"{json.dumps(value)[:60]}; {RESAVE}"
        )
    library, class_name = value
    if library not in ("diffusers", "transformers") and library not in sys.modules:
        raise ModelFolderError(
            f"{where}: component {name!r} names the library {library!r}, which is not loaded (a library is "
            "never imported because a folder names it); use diffusers or transformers classes, or import the "
            "library first"
        )
    module = importlib.import_module(library)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelFolderError(
            f"{where}: component {name!r} names the class {class_name!r}, which {library} "
            f"{getattr(module, '__version__', '')} does not have; fix model_index.json or update {library}"
        )
    return cls


def _check_component(folder: Path, where: str, name: str, value: Any) -> None:
    """One component: its folder, its config, its weights or tokenizer files."""
    cls = _component_class(where, name, value)
    if cls is None:
        return
    sub = folder / name
    what = f"component {name!r} ({cls.__name__})"
    if not sub.is_dir():
        raise ModelFolderError(f"{where}: {what}: the folder {name}/ is missing; {RESAVE}")
    kind = _kind(cls)
    if kind == "scheduler":
        _require_json(sub, "scheduler_config.json", where, what, name)
    elif kind == "model":
        _require_json(sub, "config.json", where, what, name)
        _check_weights(sub, where, what, name)
    elif kind == "tokenizer":
        _check_tokenizer(cls, sub, where, what, name)


def _kind(cls: type) -> str:
    """'model', 'scheduler', 'tokenizer' or 'other' (image processors and such: left to their loaders)."""
    names = {base.__name__ for base in cls.__mro__}
    if names & {"ModelMixin", "PreTrainedModel"}:
        return "model"
    if names & {"SchedulerMixin"}:
        return "scheduler"
    if names & {"PreTrainedTokenizerBase"}:
        return "tokenizer"
    return "other"


def _require_json(sub: Path, file: str, where: str, what: str, name: str) -> None:
    if not (sub / file).is_file():
        raise ModelFolderError(f"{where}: {what}: {name}/{file} is missing; {RESAVE}")
    _json_file(sub / file, where, f"{what}: {name}/{file}")


def _check_weights(sub: Path, where: str, what: str, name: str) -> None:
    """Safetensors weights whose headers read; only pickle weights are refused (never unpickled)."""
    files = sorted(p for p in sub.iterdir() if p.is_file())
    shards = [p for p in files if p.name.endswith(".safetensors.index.json")]
    weights = [p for p in files if p.suffix == ".safetensors"]
    for index in shards:
        listed = set(_json_file(index, where, f"{what}: {name}/{index.name}").get("weight_map", {}).values())
        missing = sorted(str(f) for f in listed if not (sub / str(f)).is_file())
        if missing:
            raise ModelFolderError(
                f"{where}: {what}: {name}/{index.name} lists {missing[0]}, which is missing; {RESAVE}"
            )
    if not weights:
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelFolderError(
                f"{where}: {what}: {name}/{pickles[0]} is a pickle file, which is never loaded (unpickling can run "
                "code); convert it to safetensors: load it where you trust it and save_pretrained(..., "
                "safe_serialization=True)"
            )
        raise ModelFolderError(f"{where}: {what}: {name}/ has no weights file (*.safetensors); {RESAVE}")
    from safetensors import SafetensorError, safe_open

    for path in weights:
        try:
            with safe_open(path, "pt") as opened:
                opened.keys()
        except (SafetensorError, OSError) as error:
            raise ModelFolderError(
                f"{where}: {what}: {name}/{path.name} is not a valid safetensors file, truncated or corrupt "
                f"({error}); {RESAVE}"
            ) from None


def _check_tokenizer(cls: type, sub: Path, where: str, what: str, name: str) -> None:
    """tokenizer.json (valid JSON), or every vocabulary file of the slow tokenizer (vocab.json, merges.txt...)."""
    if (sub / "tokenizer.json").is_file():
        try:
            json.loads((sub / "tokenizer.json").read_bytes())
        except (OSError, ValueError, RecursionError) as error:
            raise ModelFolderError(
                f"{where}: {what}: {name}/tokenizer.json cannot be read ({type(error).__name__}); {RESAVE}"
            ) from None
        return
    needed = [f for k, f in getattr(cls, "vocab_files_names", {}).items() if k != "tokenizer_file"]
    missing = [f for f in needed if not (sub / f).is_file()]
    if missing or not needed:
        files = " or ".join(["tokenizer.json", " + ".join(needed)] if needed else ["tokenizer.json"])
        raise ModelFolderError(f"{where}: {what}: {name}/ has no {files}; {RESAVE}")


# -------------------------------------------------------------------------------------------------------------
# The load itself: the libraries' errors, translated into one line naming the component
# -------------------------------------------------------------------------------------------------------------


def load_checked(folder: str | os.PathLike, index: dict, load: Callable[[], T]) -> T:
    """`load()` of a checked local folder; what the libraries raise while reading its files (a weight of the
    wrong shape, a tokenizer file that does not parse) becomes a ModelFolderError naming the component."""
    from safetensors import SafetensorError

    try:
        return load()
    except (OSError, ValueError, RuntimeError, SafetensorError, OverflowError, KeyError) as error:
        if isinstance(error, GuidanceError):
            raise
        name = _failed_component(error, folder, index)
        if name is None:  # not a file of the folder (a bad keyword argument, say): the library's own error
            raise
        what = f"component {name!r} ({index[name][1]})"
        text = " ".join(str(error).split())
        shape = re.search(r"shape|size mismatch|mismatched", text)
        why = (
            "weights of the wrong shape for its config: " if shape else f"{type(error).__name__}: "
        ) + text[:160]
        raise ModelFolderError(
            f"model folder {shown_path(folder)}: {what} does not load: {why}; {RESAVE}"
        ) from (error)


def _failed_component(error: BaseException, folder: str | os.PathLike, index: dict) -> str | None:
    """The component diffusers was loading when `error` was raised (its `load_sub_model` frame), else the one
    whose folder the message names."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "load_sub_model":
            name = tb.tb_frame.f_locals.get("name")
            if name in index:
                return name
        tb = tb.tb_next
    text = str(error)
    return next((n for n in index if not n.startswith("_") and f"{os.sep}{n}{os.sep}" in text), None)


# -------------------------------------------------------------------------------------------------------------
# The call a model folder recommends (toy models: toyworld.json beside the weights)
# -------------------------------------------------------------------------------------------------------------

SETTINGS_FILE = "toyworld.json"  # recommended sampling settings written next to a model's weights
# The call arguments a folder may record, each checked as the pipelines check them; other keys (notes) are ignored.
RECORDED_SETTINGS: dict[str, Setting] = {
    **{k: CALL_SETTINGS[k] for k in ("num_inference_steps", "guidance_scale", "true_cfg_scale", "height", "width")},
    "max_sequence_length": Setting("max_sequence_length", None, "integer", 1, 512,
                                   help="T5 tokens the model was trained with."),
    "negative_prompt": GENERATION_SETTINGS["negative_prompt"],
}  # fmt: skip


def folder_recommendations(path: str | os.PathLike) -> dict:
    """The call a local model folder recommends: the `RECORDED_SETTINGS` its `SETTINGS_FILE` holds, checked; {}
    for a folder without that file (or a hub id). A file that is not strict JSON or records a bad value is a
    ModelFolderError naming the folder, the file and the key."""
    file = Path(path).expanduser() / SETTINGS_FILE
    if not file.is_file():
        return {}
    where = f"model folder {shown_path(path)}"
    data = _json_file(file, where, SETTINGS_FILE)
    settings = {}
    for key, setting in RECORDED_SETTINGS.items():
        if key in data:
            settings[key] = setting.check(data[key], ModelFolderError, f"{where}: {SETTINGS_FILE}: {key}")
    return settings


# SD3 / FLUX tokenizing with a T5 length shorter than the prompt (diffusers' notice on the pipeline's logger).
T5_TRUNCATION = re.compile(r"truncated because `max_sequence_length` is set to\s*(\d+)\s*tokens")
_T5_BY_DESIGN: ContextVar[int | None] = ContextVar("t5_length_by_design", default=None)


class _TruncationByDesign(logging.Filter):
    """Drops the T5 truncation notice at the length the running call was trained at (`t5_length_by_design`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        length = _T5_BY_DESIGN.get()
        if length is None:
            return True
        truncated = T5_TRUNCATION.search(record.getMessage())
        return not (truncated and int(truncated.group(1)) == length)


@contextmanager
def t5_length_by_design(logger_name: str, length: int | None) -> Iterator[None]:
    """While the body encodes a prompt at `length`, the T5 length its model was trained at (its folder records
    it), the truncation notice that logger `logger_name` gives for that length is dropped: prompts cut to it are
    expected. Other lengths, other calls and other threads still get the notice."""
    if length is None:
        yield
        return
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _TruncationByDesign) for f in logger.filters):
        logger.addFilter(_TruncationByDesign())
    token = _T5_BY_DESIGN.set(int(length))
    try:
        yield
    finally:
        _T5_BY_DESIGN.reset(token)
