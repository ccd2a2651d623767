"""Batch jobs on a Ray cluster: `headhunter batch JOBS --out DIR --engine ray [--workers N] [--ray-address auto]`.

The driver validates the jobs and plans the items exactly as the local engine (`tools.batch.plan`), holds the
output folder's lock, checks what is done (`BatchRunner.check_done`), and forms the same groups of items that
`--batch-size` generates together (`tools.batch.batches`), so every image equals the local engine's. Ray Data
sends one group per row to a pool of actors (`ActorPoolStrategy(size=workers)`); each actor loads the pipeline
once and writes each item as the local engine does (temporary file renamed into place, PNG metadata, a manifest
line in its own `manifest.rank-ray-<pid>.jsonl`). An actor that dies is restarted by Ray and its group retried: the
retry re-reads every manifest and writes only what is still missing, so every id ends up once. At the end the
driver merges the actors' manifests into `manifest.jsonl` (one line per item).

Ray is an optional extra: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from tools.batch import BatchRunner, Item, batches, folder_lock, read_manifests

INSTALL = 'the ray engine needs Ray Data: pip install -e ".[ray]"  (or: pip install "ray[data]")'
RESTARTS = 4  # an actor killed more often than this (e.g. out of memory at every load) fails the run


class EngineError(ValueError):
    """A batch engine that cannot run here (Ray missing, a cluster that cannot be reached)."""


def require_ray():
    """The `ray` module with Ray Data, or EngineError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 (Ray Data is a separate extra of Ray)
    except ImportError:
        raise EngineError(INSTALL) from None
    return ray


def _item_row(item: Item) -> dict:
    return {
        "id": item.id,
        "line": item.line,
        "seed": item.seed,
        "settings": item.settings,
        "explicit": item.explicit,
    }


def _items(text: str) -> list[Item]:
    return [
        Item(r["id"], r["line"], r["seed"], r["settings"], tuple(r["explicit"])) for r in json.loads(text)
    ]


class _Generate:
    """A Ray Data actor: one pipeline, loaded once; generates the groups of items it is given."""

    def __init__(self, load: Callable, model: str, out: str, batch_size: int, resolve_heads: Callable,
                 extras: dict, threads: int):  # fmt: skip
        import torch

        torch.set_num_threads(threads)
        self.runner = BatchRunner(load(), model, out, batch_size, resolve_heads, extras)
        self.runner.rank, self.runner.world = 0, 1  # one share per group; the driver holds the folder
        self.runner.lock = False
        self.runner.manifest = self.runner.out / f"manifest.rank-ray-{os.getpid()}.jsonl"

    def __call__(self, batch: dict) -> dict:
        """Each row is one group (JSON); write its items that no manifest has yet (a retry skips finished ones)."""
        from tools.batch import repair_manifest

        repair_manifest(self.runner.manifest)
        ok, failed = [], []
        for text in batch["group"]:
            group = _items(str(text))
            done = read_manifests(self.runner.out)
            todo = [item for item in group if item.id not in done]
            counts = {"ok": 0, "failed": 0}
            if todo:
                self.runner._run_group(group, todo, counts)
            ok.append(counts["ok"])
            failed.append(counts["failed"])
        return {"ok": ok, "failed": failed}


def _quiet(ray, progress: bool) -> None:
    """Ray Data's progress bars only with `progress`; its INFO lines off."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_ray(
    runner: BatchRunner,
    items: list[Item],
    load: Callable,
    workers: int = 2,
    address: str | None = None,
    use_gpus: bool = False,
    redo_changed: bool = False,
    progress: bool = True,
) -> dict:
    """Generate what is not done of `items` with `workers` Ray actors, each building its pipeline with `load()`
    (a picklable function); `runner` (the driver's, not used to generate) gives the settings and the folder.
    Joins the cluster at `address` ("auto" or host:port), else starts a local one. Returns counts as
    `BatchRunner.run`."""
    import time

    ray = require_ray()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise EngineError(f"--workers must be an integer >= 1; got {workers!r}")
    out = Path(runner.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with folder_lock(out):
        runner.check_done(items, redo_changed)
        done = read_manifests(out)
        groups = [g for g in batches(items, runner.batch_size) if any(i.id not in done for i in g)]
        counts = {"done_before": sum(i.id in done for i in items), "ok": 0, "failed": 0}
        if groups:
            started = not ray.is_initialized()
            if started:
                try:
                    if address:
                        ray.init(address=address, include_dashboard=False, log_to_driver=False)
                    else:
                        ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                                 log_to_driver=False)  # fmt: skip
                except ConnectionError as error:
                    raise EngineError(f"--ray-address {address!r}: no Ray cluster there ({error})") from None
            _quiet(ray, progress)
            try:
                threads = max(1, (os.cpu_count() or 1) // workers)
                rows = [{"group": json.dumps([_item_row(i) for i in g])} for g in groups]
                resources = {"num_gpus": 1} if use_gpus else {"num_cpus": 1}
                results = (
                    ray.data.from_items(rows)
                    .map_batches(
                        _Generate,
                        fn_constructor_args=(
                            load,
                            runner.model,
                            str(out),
                            runner.batch_size,
                            runner.resolve_heads,
                            runner.extras,
                            threads,
                        ),  # fmt: skip
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        batch_size=1,
                        batch_format="numpy",
                        max_restarts=RESTARTS,
                        max_task_retries=RESTARTS,
                        **resources,
                    )
                    .take_all()
                )
            finally:
                if started:
                    ray.shutdown()
            # From the manifests, not the actors' returns: a killed actor's items written before it died count.
            finished = read_manifests(out)
            counts["ok"] = sum(i.id in finished for i in items) - counts["done_before"]
            counts["failed"] = sum(int(r["failed"]) for r in results)
        runner.merge()
    counts["seconds"] = time.perf_counter() - start
    counts["items_per_second"] = counts["ok"] / counts["seconds"] if counts["seconds"] else 0.0
    return counts
