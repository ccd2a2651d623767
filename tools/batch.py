"""Batch generation jobs: validated job files, deterministic seeds, atomic outputs, a manifest, resume, ranks.

`headhunter batch JOBS --out DIR`: JOBS is JSONL (one object per line) or CSV with a header. Keys mirror the
pipelines' call arguments (see `FIELDS`). Each line becomes `num_images` items `<id>-<k>` with seed `seed + k`;
the id is the line's `id` or a hash of its resolved settings, so a rerun finds what is done. A run holds its
folder (a lock file) and writes no file through a link. Every item is written to a temporary file and renamed,
then recorded in the manifest (JSONL) with everything that made it (`tools.settings.image_record`). A rerun
skips finished items only if their record still equals what the job asks and their image decodes; anything else
is an error naming the items, or with `redo_changed` is made again. Under `accelerate launch` (RANK /
WORLD_SIZE) each rank takes every WORLD_SIZE-th item (with `--engine accelerate`: a contiguous slice from
accelerate's `split_between_processes`) and keeps its own manifest; rank 0 merges them into `manifest.jsonl` at
the end. `tools.batch_ray` runs the same items on Ray actors.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guidance.config import (
    GENERATION_SETTINGS,
    SOFTPAG_SETTINGS,
    STRUCTURED_SETTINGS,
    GuidanceError,
    Setting,
    check_window,
)
from guidance.heads import PRESET_SETTINGS, HeadSelection, HeadSelectionError, short_repr
from guidance.ranks import barrier, process_index
from guidance.strictjson import integer, loads_strict, refused_values
from tools.settings import (
    LATER_SETTINGS,
    OutputError,
    StructuredSupport,
    check_structured,
    explicit_over_preset,
    image_record,
    output_images,
    pipeline_call,
    record_parameters,
    save_png,
    with_true_cfg,
    write_atomically,
)

PAG_KEYS = ("pag_heads", "pag_scale", "pag_strength", "pag_identity", "pag_start", "pag_stop", "pag_every",
            "pag_branch")  # fmt: skip
GENERATION_KEYS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "height", "width", "guidance_scale",
                   "num_images")  # fmt: skip
# Every job key but `id` is checked by the config setting that owns it.
SETTINGS: dict[str, Setting] = {
    **{key: GENERATION_SETTINGS[key] for key in GENERATION_KEYS},
    **{key: SOFTPAG_SETTINGS[key] for key in PAG_KEYS},
    "structured": STRUCTURED_SETTINGS["structured"],
}
# Keys added after the first job files: they count in a line's hash only where not the default, so that the ids of
# the lines written before them stay as they were (a rerun finds its items).
LATER_KEYS = (*LATER_SETTINGS, "structured")
ID_ALLOWED = "a string of letters, digits, '-', '_', '.' (at most 128)"
# name -> (check, what is allowed), for readers of the job format (docs, tests).
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (lambda v: _id_ok(v), ID_ALLOWED),
    **{key: (lambda v, s=setting: _passes(s, v), setting.allowed()) for key, setting in SETTINGS.items()},
}
DEFAULTS = {
    key: SETTINGS[key].default for key in (*GENERATION_KEYS[1:], *PAG_KEYS, "structured") if key != "seed"
}
CALL_KEYS = ("negative_prompt", "num_inference_steps", "height", "width", "guidance_scale", "structured")
MAX_JOB_BYTES = 64 * 1024 * 1024


def _id_ok(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value.isascii()
        and all(c.isalnum() or c in "-_." for c in value)
        and value not in (".", "..")
    )


def _passes(setting: Setting, value: Any) -> bool:
    try:
        setting.check(value)
    except GuidanceError:
        return False
    return True


class JobFileError(ValueError):
    """A job file with problems; `problems` lists them as (line number, message)."""

    def __init__(self, path: str, problems: list[tuple[int, str]], message: str | None = None):
        self.problems = problems
        if message is None:
            lines = "\n".join(f"  line {n}: {m}" for n, m in problems)
            message = f"{len(problems)} problem(s), nothing was generated:\n{lines}"
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class Item:
    """One image to make: its id, output file name, seed and the resolved settings of its job line."""

    id: str
    line: int
    seed: int
    settings: dict
    explicit: tuple[str, ...] = ()  # the preset settings its job line or the run's defaults give explicitly

    @property
    def file(self) -> str:
        return f"{self.id}.png"


# -------------------------------------------------------------------------------------------------------------
# Reading and validating
# -------------------------------------------------------------------------------------------------------------


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf)", re.I | re.ASCII
)


def _csv_value(key: str, text: str):
    """A CSV cell: numeric fields become numbers where the text is one; everything else stays a string."""
    kind = SETTINGS[key].kind if key in SETTINGS else "text"
    cell = text.strip()
    if kind == "integer" and _INTEGER.fullmatch(cell):
        return integer(cell)
    if kind == "number" and _NUMBER.fullmatch(cell):
        return float(cell)
    return text


def read_job_text(path: str | Path) -> str:
    """The job file as text, or JobFileError naming it (missing, unreadable, too large, binary, not UTF-8)."""
    file = Path(path)
    try:
        if not file.is_file():
            raise JobFileError(str(path), [], "no such file")
        if file.stat().st_size > MAX_JOB_BYTES:
            raise JobFileError(str(path), [], f"larger than {MAX_JOB_BYTES // 2**20} MiB")
        data = file.read_bytes()
    except OSError as error:
        raise JobFileError(short_repr(str(path)), [], f"cannot be read: {error.strerror or error}") from None
    if b"\0" in data:
        raise JobFileError(str(path), [], "a binary file, not a JSONL or CSV job file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise JobFileError(str(path), [], f"not UTF-8 text (byte {error.start})") from None


def _csv_lines(text: str) -> list[tuple[int, dict | str]]:
    """(line number, job or error) per CSV row under the header; numeric fields converted (`_csv_value`)."""
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module finds the rows, quoted newlines too
    header = [h.strip() for h in next(reader, [])]
    if len(set(header)) != len(header) or "" in header:
        return [(1, f"the header {header} needs distinct, non-empty column names")]
    rows: list[tuple[int, dict | str]] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            rows.append((reader.line_num, f"{len(row)} cells, but the header has {len(header)} columns"))
            continue
        job = {k: _csv_value(k, v) for k, v in zip(header, row) if v != ""}
        problems = refused_values(job)
        rows.append((reader.line_num, "; ".join(problems) if problems else job))
    return rows


def _jsonl_lines(text: str) -> list[tuple[int, dict | str]]:
    """(line number, job or error) per non-blank, non-comment JSONL line. Lines end at '\n' only: JSON strings
    may hold U+2028, U+0085 and other characters that `str.splitlines` would split at."""
    rows: list[tuple[int, dict | str]] = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = loads_strict(line)
        except json.JSONDecodeError as error:
            rows.append((n, f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        except RecursionError:
            rows.append((n, "not valid JSON (nested too deeply)"))
            continue
        if not isinstance(obj, dict):
            rows.append((n, f"a job must be a JSON object, got {type(obj).__name__}"))
            continue
        problems = refused_values(obj)
        rows.append((n, "; ".join(problems) if problems else obj))
    return rows


def read_lines(path: str | Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per job; a line that cannot be read yields (line number, error text).

    CSV keeps every cell a string except the numeric fields (steps, seed, scales...), so ids such as `007`
    and prompts such as `1984` stay as written."""
    text = read_job_text(path)
    rows = _csv_lines(text) if str(path).lower().endswith(".csv") else _jsonl_lines(text)
    if not rows:
        raise JobFileError(str(path), [], "holds no jobs (it is empty, or only blank lines and comments)")
    return rows


def _check_value(key: str, value: Any) -> str | None:
    """The problem with one job value, or None."""
    if key == "id":
        return None if _id_ok(value) else f"id={short_repr(value)} is not allowed; use {ID_ALLOWED}"
    try:
        SETTINGS[key].check(value)
    except GuidanceError as error:
        return str(error)
    return None


def check_job(
    job: dict,
    heads_per_layer: dict | None,
    resolve_heads: Callable[..., str],
    structured: StructuredSupport | None = None,
) -> list[str]:
    """Every problem of one job (after defaults), as messages naming the key, the value and what is allowed;
    `structured`: what the model's family allows of `structured` (None: not known yet, not checked)."""
    problems = [
        f"unknown key {short_repr(k)}; allowed: {', '.join(sorted(FIELDS))}" for k in job if k not in FIELDS
    ]
    if "prompt" not in job:
        problems.append("missing key 'prompt'")
    problems += [p for key, value in job.items() if key in FIELDS and (p := _check_value(key, value))]
    if not problems:
        window = (job.get(k, SOFTPAG_SETTINGS[k].default) for k in ("pag_start", "pag_stop"))
        try:
            check_window(*window, GuidanceError, ("pag_start", "pag_stop"))
        except GuidanceError as error:
            problems.append(str(error))
    if not problems and job.get("structured") and structured is not None:
        try:
            check_structured(job["structured"], structured, job.get("pag_heads"))
        except GuidanceError as error:
            problems.append(str(error))
    if not problems and job.get("pag_heads"):
        try:
            selection = HeadSelection.parse(resolve_heads(job["pag_heads"], "pag_heads"), "pag_heads")
            if heads_per_layer is not None:
                selection.validate(heads_per_layer, "pag_heads")
        except HeadSelectionError as error:
            problems.append(str(error))
    return problems


def job_id(job: dict) -> str:
    """The line's `id`, or a hash of its resolved settings (stable across runs and line order)."""
    if "id" in job:
        return job["id"]
    kept = {k: v for k, v in job.items() if k != "num_images" and not (k in LATER_KEYS and v == DEFAULTS[k])}
    content = json.dumps(kept, sort_keys=True)  # settings added later count only where not the default
    return hashlib.sha1(content.encode()).hexdigest()[:12]


def plan(
    path: str | Path,
    defaults: dict,
    heads_per_layer: dict | None,
    resolve_heads: Callable[..., str] = lambda heads, parameter="pag_heads": heads,
    skip_invalid: bool = False,
    structured: StructuredSupport | None = None,
) -> tuple[list[Item], list[tuple[int, str]]]:
    """Validate every line, then expand valid lines into items. Raises JobFileError unless skip_invalid.
    `structured`: the model family's structured modes (`structured_support`), checked per line where given."""
    problems: list[tuple[int, str]] = []
    bad_defaults = check_job({"prompt": "-", **defaults}, heads_per_layer, resolve_heads, structured)
    if bad_defaults:
        raise JobFileError("defaults (model folder, --config, flags)", [], "; ".join(bad_defaults))
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, job in read_lines(path):
        if isinstance(job, str):
            problems.append((n, job))
            continue
        resolved = {**DEFAULTS, **defaults, **job}
        messages = check_job(resolved, heads_per_layer, resolve_heads, structured)
        ident = None if messages else job_id(resolved)
        if ident is not None and ident in seen:
            messages.append(f"id {ident!r} repeats line {seen[ident]}")
        if messages:
            problems += [(n, m) for m in messages]
            continue
        seen[ident] = n
        base_seed = resolved.get("seed", int(hashlib.sha1(ident.encode()).hexdigest()[:8], 16))
        settings = {k: v for k, v in resolved.items() if k not in ("id", "seed", "num_images")}
        explicit = tuple(sorted((set(job) | set(defaults)) & set(PRESET_SETTINGS)))
        for k in range(resolved["num_images"]):
            items.append(Item(f"{ident}-{k}", n, base_seed + k, settings, explicit))
    if problems and not skip_invalid:
        raise JobFileError(str(path), problems)
    return items, problems


# -------------------------------------------------------------------------------------------------------------
# The output folder: one run at a time, no file written through a link
# -------------------------------------------------------------------------------------------------------------

LOCK_FILE = ".headhunter-batch.lock"


class FolderInUseError(OutputError):
    """`--out` is held by another batch run: its lock file is locked."""


def open_regular(path: Path, flags: int) -> int:
    """A descriptor of `path` opened without following a link (and without blocking on a FIFO); OutputError for
    a link, anything but a regular file, or a file with other hard links (writing it would change another)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:
        why = "is a symbolic link" if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})"
        raise OutputError(f"--out: {str(path)!r} {why}; batch writes no file through a link: remove it or "
                          "choose another --out") from None  # fmt: skip
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        why = "is not a regular file" if not stat.S_ISREG(info.st_mode) else "has other hard links"
        raise OutputError(f"--out: {str(path)!r} {why}; batch writes only files of its own: replace it with a "
                          "copy, remove it, or choose another --out")  # fmt: skip
    return fd


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` for one run: an exclusive, non-blocking flock on its lock file, released when the run ends
    or its process dies. FolderInUseError naming the holder's pid if another run holds it."""
    fd = open_regular(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "it has not written its pid yet"
            raise FolderInUseError(
                f"--out {str(folder)!r} is in use by another batch run ({holder}): wait for it to finish or stop "
                "it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Append one line to `path` (created if missing, never through a link) and fsync it."""
    with os.fdopen(open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _records(path: Path) -> list[dict]:
    """The JSON objects of one manifest; a line cut by a kill (or anything else unreadable) is skipped."""
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    records = []
    for line in text.split("\n"):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            records.append(record)
    return records


def _finished(record: dict) -> bool:
    return record.get("status") == "ok" and isinstance(record.get("file"), str)


def read_manifests(out: Path) -> dict[str, dict]:
    """The latest finished record of each id, from manifest.jsonl and any per-rank manifests."""
    return {
        r["id"]: r for path in sorted(out.glob("manifest*.jsonl")) for r in _records(path) if _finished(r)
    }


def forget(out: Path, ids: set[str]) -> None:
    """Drop the finished records of `ids` from every manifest of `out`, each file replaced atomically."""
    for path in sorted(out.glob("manifest*.jsonl")):
        records = _records(path)
        kept = [r for r in records if not (_finished(r) and r["id"] in ids)]
        if len(kept) < len(records):
            write_records(path, kept)


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a manifest with `records`, one JSON line each (`write_atomically`: whole or not at all)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    write_atomically(path, lambda f: f.write(text.encode()))


def repair_manifest(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so that the next record starts a line of its own."""
    if not os.path.lexists(path):
        return
    with os.fdopen(open_regular(path, os.O_RDWR), "r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


# -------------------------------------------------------------------------------------------------------------
# Resume: what counts as done
# -------------------------------------------------------------------------------------------------------------

# Record keys that say where and when an item was made, not how: they may differ between runs.
BOOKKEEPING = ("id", "file", "line", "status", "time", "version", "batch_size")
SHOWN_CHANGES = 5


class ChangedItemsError(OutputError):
    """Finished items whose record no longer matches the job, or whose image is damaged; `items`: id -> why."""

    def __init__(self, out: Path, items: dict[str, str]):
        self.items = items
        shown = "".join(f"\n  {i}: {why}" for i, why in list(items.items())[:SHOWN_CHANGES])
        more = f"\n  ... and {len(items) - SHOWN_CHANGES} more" if len(items) > SHOWN_CHANGES else ""
        super().__init__(
            f"--out {str(out)!r}: {len(items)} finished item(s) do not match the job or are damaged, so they do "
            f"not count as done:{shown}{more}\nrerun with --redo-changed (BatchRunner.run(redo_changed=True)) to "
            "regenerate exactly these items, or choose another --out"
        )


def record_difference(recorded: dict, expected: dict) -> str | None:
    """How a finished item's record differs from what its job asks now (every setting but `BOOKKEEPING`)."""
    expected = json.loads(json.dumps(expected))  # as it would be recorded: tuples as lists, keys as strings
    keys = sorted((set(recorded) | set(expected)) - set(BOOKKEEPING))
    changed = [k for k in keys if k not in recorded or k not in expected or recorded[k] != expected[k]]
    if not changed:
        return None
    shown = [f"{k}: {_shown(recorded, k)} recorded, {_shown(expected, k)} now" for k in changed[:3]]
    return "; ".join(shown) + (f"; {len(changed) - 3} more settings" if len(changed) > 3 else "")


def _shown(record: dict, key: str) -> str:
    return short_repr(record[key]) if key in record else "(none)"


def image_problem(path: Path) -> str | None:
    """Why a finished item's PNG cannot count as done (missing, not a plain file, does not decode), or None."""
    from PIL import Image

    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return "its image is a link or not a file"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return "its image is missing"
    except Exception as error:  # noqa: BLE001 (whatever stops it decoding, the image is not done)
        return f"its image does not decode ({type(error).__name__}: {short_repr(str(error))})"
    return None


# -------------------------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------------------------


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive groups of at most `size` items with identical settings except prompt and seed.

    The groups depend only on the plan, never on what is already done: a resumed run regenerates a partly
    written group whole, so every image is the one an uninterrupted run makes (see docs/reliability.md)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        key = json.dumps(
            [{k: v for k, v in item.settings.items() if k != "prompt"}, item.explicit], sort_keys=True
        )
        group = groups.setdefault(key, [])
        group.append(item)
        if len(group) == size:
            yield groups.pop(key)
    yield from groups.values()


class BatchRunner:
    """Generate the items of a plan with one pipeline, writing PNGs and manifest lines as they finish."""

    def __init__(self, pipe, model: str, out: str | Path, batch_size: int = 1,
                 resolve_heads=lambda heads, parameter="pag_heads": heads,
                 extras: dict | None = None):  # fmt: skip
        from importlib.metadata import PackageNotFoundError, version

        GENERATION_SETTINGS["batch_size"].check(batch_size, GuidanceError, "batch_size")
        self.pipe, self.model, self.out, self.batch_size = pipe, model, Path(out), batch_size
        self.resolve_heads = resolve_heads
        self.extras = extras or {}  # call arguments the model needs (see tools.cli.model_call_extras)
        try:
            self.version = version("headhunter-diffusion")
        except PackageNotFoundError:
            self.version = "unknown"
        self.rank, self.world = process_index()
        self.manifest = self.out / (
            "manifest.jsonl" if self.world == 1 else f"manifest.rank{self.rank}.jsonl"
        )
        # run() holds the folder's lock; False where the caller holds it (the Ray engine's driver).
        self.lock = True
        self._accelerate = None  # accelerate's PartialState under `--engine accelerate`

    def use_accelerate(self) -> None:
        """Ranks from accelerate's `PartialState`, each rank's share a contiguous slice of the plan
        (`split_between_processes`): `accelerate launch -m tools.cli batch ... --engine accelerate`."""
        import torch
        from accelerate import PartialState

        # On a machine without CUDA, accelerate counts a multi-process launch only when asked for its CPU backend.
        self._accelerate = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self._accelerate.process_index, self._accelerate.num_processes
        self.manifest = self.out / (
            "manifest.jsonl" if self.world == 1 else f"manifest.rank{self.rank}.jsonl"
        )

    def _share(self, items: list[Item]) -> list[Item]:
        """This rank's items: every WORLD_SIZE-th (ranks from the environment), or accelerate's slice."""
        if self._accelerate is None:
            return [item for i, item in enumerate(items) if i % self.world == self.rank]
        with self._accelerate.split_between_processes(items) as share:
            return list(share)

    def _call(self, item: Item) -> tuple[dict, dict | None, dict]:
        """(call arguments, SoftPAG keywords or None, record entries) of an item, as the pipeline gets them; a
        preset setting the job gives explicitly wins over the preset's (`explicit_over_preset`)."""
        settings = item.settings
        call = {**self.extras, **{k: settings[k] for k in CALL_KEYS if settings.get(k) is not None}}
        if self.pipe is not None:
            call = with_true_cfg(call, self.pipe)  # a true-CFG model's CFG is the job's guidance_scale
        if not settings.get("pag_heads"):
            return call, None, {}
        pag = {**{k: settings[k] for k in PAG_KEYS}, "pag_heads": self.resolve_heads(settings["pag_heads"])}
        return (call, *explicit_over_preset(pag, set(item.explicit)))

    def expected(self, item: Item) -> dict:
        """The manifest record (but its time) of an item made now: `image_record` and where it was written."""
        call, pag, kept = self._call(item)
        prompt = item.settings["prompt"]
        if call.get("structured"):
            from pipelines.structured import structured_phrases

            call["noun_phrases"] = structured_phrases(prompt)  # recorded; the call parses the prompt again
        made = {**image_record(self.model, {"prompt": prompt, "seed": item.seed, **call}, pag), **kept}
        return {"id": item.id, "file": item.file, "line": item.line, **made, "batch_size": self.batch_size,
                "version": self.version}  # fmt: skip

    def _generate(self, group: list[Item]):
        import torch

        call, pag, _ = self._call(group[0])
        if call.get("negative_prompt") is not None:
            call["negative_prompt"] = [call["negative_prompt"]] * len(group)
        generators = [torch.Generator().manual_seed(item.seed) for item in group]
        prompts = [item.settings["prompt"] for item in group]
        # the prompt by name (FLUX.2's first positional argument is an input image); a video as its frames
        call = pipeline_call(call, self.pipe)
        return output_images(self.pipe(prompt=prompts, generator=generators, **call, **(pag or {})))

    def check_done(self, items: list[Item], redo_changed: bool = False) -> None:
        """Every finished item of the plan must still be done: its record holds what its job asks now (prompt,
        seed, steps, size, model, guidance, heads, preset hash...) and its image decodes. Otherwise
        ChangedItemsError, or with `redo_changed` their records are dropped, so that they are made again."""
        done = read_manifests(self.out)
        changed = {i.id: why for i in items if i.id in done and (why := self._why_not_done(i, done[i.id]))}
        if changed and not redo_changed:
            raise ChangedItemsError(self.out, changed)
        if changed:
            forget(self.out, set(changed))

    def _why_not_done(self, item: Item, record: dict) -> str | None:
        """Why a finished record of `item` does not count as done (`record_difference`, `image_problem`)."""
        return record_difference(record, self.expected(item)) or image_problem(self.out / item.file)

    def run(self, items: list[Item], progress: bool = True, redo_changed: bool = False) -> dict:
        """Generate what is not done yet (this rank's share); returns counts.

        The run holds the folder (`folder_lock`, taken by rank 0 for all ranks); rank 0 checks what is done
        (`check_done`) before any rank starts, and merges the ranks' manifests after all are finished."""
        self.out.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.out) if self.lock and self.rank == 0 else nullcontext():
            if self.rank == 0:
                self.check_done(items, redo_changed)
            if self.world > 1:
                barrier()
            counts = self._run_share(items, progress)
            if self.world > 1:
                barrier()
                if self.rank == 0:
                    self.merge()
        return counts

    def _run_share(self, items: list[Item], progress: bool) -> dict:
        """This rank's share: groups are formed over the whole share, done items included; a group with any item
        left is generated whole and only its missing items are written, so a resume gives the images of an
        uninterrupted run."""
        from tqdm.auto import tqdm

        repair_manifest(self.manifest)
        done = read_manifests(self.out)
        share = self._share(items)
        for item in share:
            if item.id not in done:
                (self.out / f".{item.file}.tmp").unlink(missing_ok=True)  # a partial file from a killed run
        counts = {"done_before": sum(item.id in done for item in items), "ok": 0, "failed": 0}
        start = time.perf_counter()
        bar = tqdm(total=sum(item.id not in done for item in share), unit="img", disable=not progress,
                   desc=f"batch rank {self.rank}" if self.world > 1 else "batch")  # fmt: skip
        for group in batches(share, self.batch_size):
            todo = [item for item in group if item.id not in done]
            if todo:
                self._run_group(group, todo, counts)
                bar.update(len(todo))
        bar.close()
        counts["seconds"] = time.perf_counter() - start
        counts["items_per_second"] = counts["ok"] / counts["seconds"] if counts["seconds"] else 0.0
        return counts

    def _record(self, record: dict) -> None:
        append_line(self.manifest, json.dumps(record, sort_keys=True))

    def _run_group(self, group: list[Item], todo: list[Item], counts: dict) -> None:
        """Generate one group; write and record its `todo` items, or record their error."""
        try:
            images = dict(zip((item.id for item in group), self._generate(group), strict=True))
        except Exception as error:  # noqa: BLE001 (a failing group is reported and skipped)
            for item in todo:
                self._record({"id": item.id, "line": item.line, "status": "error",
                              "error": f"{type(error).__name__}: {' '.join(str(error).split())}"})  # fmt: skip
            counts["failed"] += len(todo)
            return
        for item in todo:
            record = {**self.expected(item), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            save_png(images[item.id], self.out / item.file, record_parameters(record), record)
            self._record({**record, "status": "ok"})
            counts["ok"] += 1

    def merge(self) -> Path:
        """Rank 0 after all ranks: fold per-rank manifests into manifest.jsonl (one line per finished item)."""
        done = read_manifests(self.out)
        errors = [
            r
            for path in sorted(self.out.glob("manifest*.jsonl"))
            for r in _records(path)
            if r.get("status") == "error" and r["id"] not in done
        ]
        merged = self.out / "manifest.jsonl"
        write_records(merged, [*sorted(done.values(), key=lambda r: r["id"]), *errors])
        for path in self.out.glob("manifest.rank*.jsonl"):
            path.unlink()
        return merged


def print_problems(problems: list[tuple[int, str]], stream=sys.stderr) -> None:
    """One line per problem, with its line number."""
    for n, message in problems:
        print(f"line {n}: {message}", file=stream)
