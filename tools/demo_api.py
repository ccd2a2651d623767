"""The demo's HTTP API payloads, checked before Gradio's own processing (whose errors would reach a client as
{"error": null} with show_error=False): a path that was never uploaded, a URL, a dict posted as a number.

Written against plain data: app.py describes each event input as an `ApiInput` (its label, what it takes) and
hands the posted payloads to `check_inputs`. Every refusal is a `DemoInputError` naming the input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guidance.heads import short_repr
from tools.demo import DemoInputError

KINDS = ("file", "files", "example", "bool", "number", "choice", "text", "other")


@dataclass(frozen=True)
class ApiInput:
    """What one event input takes over the HTTP API.

    `kind`: "file" / "files" (one or a list of uploaded files, named with one of `suffixes` where given; an
    upload record is read by `read_record`, which raises on one it cannot read), "example" (an example number
    below `examples`), "bool", "number", "choice" (one of `choices`), "text", "other" (no list or dict)."""

    label: str
    kind: str
    suffixes: tuple[str, ...] = ()
    choices: tuple = ()
    examples: int = 0
    read_record: Callable[[object], object] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ApiInput kind {self.kind!r} is not one of {', '.join(KINDS)}")


def check_file_payload(
    label: str, payload, multiple: bool, upload_folder: str | Path, suffixes: tuple[str, ...] = ()
) -> None:
    """An upload input's payload: None, or (a list of) files uploaded to this demo, each a regular file in
    `upload_folder` (Gradio's; named with one of `suffixes`, where given); never a path elsewhere, a URL (which
    Gradio would fetch), a folder or a link."""
    if payload is None:
        return
    if multiple and not isinstance(payload, list):
        raise DemoInputError(
            f"{label}: {short_repr(payload)} is not a list of uploaded files; upload the files "
            "(gradio_client: [handle_file(path), ...])"
        )
    upload = Path(upload_folder).resolve()
    for i, entry in enumerate(payload if multiple else [payload], start=1):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str):
            raise DemoInputError(
                f"{label}: file {i} ({short_repr(entry)}) is not an uploaded file; upload it first "
                "(gradio_client: handle_file(path))"
            )
        if re.match(r"[a-z][a-z0-9+.-]*:", path, re.IGNORECASE) and not Path(path).is_absolute():
            raise DemoInputError(
                f"{label}: file {i} is a URL ({short_repr(path)}); this demo reads uploaded files only, "
                "upload the file itself"
            )
        try:
            uploaded = "\x00" not in path and Path(path).resolve().is_relative_to(upload)
            regular = uploaded and Path(path).is_file() and not Path(path).is_symlink()
        except (OSError, ValueError):
            uploaded = regular = False
        if not uploaded:
            raise DemoInputError(
                f"{label}: file {i} ({short_repr(path)}) was not uploaded to this demo; upload it first "
                "(gradio_client: handle_file(path))"
            )
        if not regular:
            raise DemoInputError(
                f"{label}: file {i} ({short_repr(path)}) is not an uploaded file (a folder, a link or gone); "
                "upload it again"
            )
        if suffixes and Path(path).suffix.lower() not in suffixes:
            raise DemoInputError(
                f"{label}: file {i} ({short_repr(Path(path).name)}) is not a {'/'.join(suffixes)} file"
            )


def check_payload(spec: ApiInput, payload, upload_folder: str | Path) -> None:
    """One input's API payload: the types the event functions' checks expect."""
    label = spec.label
    if spec.kind in ("file", "files"):
        check_file_payload(label, payload, spec.kind == "files", upload_folder, spec.suffixes)
        if payload is None or spec.read_record is None:
            return
        try:  # Gradio's own reading of the upload record (keys, `meta`), named here
            spec.read_record(payload)
        except Exception:
            raise DemoInputError(f"{label}: {short_repr(payload)} is not an uploaded file record") from None
    elif spec.kind == "example":
        if not isinstance(payload, int) or isinstance(payload, bool) or not 0 <= payload < spec.examples:
            raise DemoInputError(
                f"{label}: {short_repr(payload)} is not an example number (0 to {spec.examples - 1})"
            )
    elif spec.kind == "bool":
        if not isinstance(payload, bool):
            raise DemoInputError(f"{label}: {short_repr(payload)} must be true or false")
    elif spec.kind == "number":
        if payload is None or isinstance(payload, dict | list):
            raise DemoInputError(f"{label}: {short_repr(payload)} is not a number; give a number")
    elif spec.kind == "choice":
        if payload is None or isinstance(payload, dict | list):
            choices = ", ".join(map(str, spec.choices))
            raise DemoInputError(f"{label}: {short_repr(payload)} is not one of {choices}")
    elif isinstance(payload, dict | list):
        what = "text" if spec.kind == "text" else "allowed here"
        raise DemoInputError(f"{label}: {short_repr(payload)} is not {what}")


def check_inputs(event: str, payloads, inputs: Sequence[ApiInput | None], upload_folder: str | Path) -> None:
    """An event's posted payloads: at least one per input, each checked by `check_payload`; None in `inputs`
    marks a state (kept by the server, not posted), which is not checked."""
    if not isinstance(payloads, list) or len(payloads) < len(inputs):
        raise DemoInputError(f"{event}: give {len(inputs)} inputs (got {short_repr(payloads)})")
    for spec, payload in zip(inputs, payloads, strict=False):
        if spec is not None:
            check_payload(spec, payload, upload_folder)
