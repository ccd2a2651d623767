"""Load check for the demo: N concurrent clients against one server; each is served or told the queue is full.

Launches the app on localhost only (the toy model if present, else a tiny random SD3), fires `--clients`
simultaneous `/generate` calls with gradio_client, then checks the server still answers. Prints a table and
writes results/demo_load.json.

    python benchmarks/demo_load.py [--clients 16] [--queue-size 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="results/demo_load.json")
    args = parser.parse_args()

    from gradio_client import Client

    import app as demo_app
    from fixtures.tiny import tiny_sd3
    from pipelines.headhunter import HeadHunterPipeline
    from tools.settings import DEFAULT_MODEL

    model = str(DEFAULT_MODEL)
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        model = tempfile.mkdtemp()
        tiny_sd3().save_pretrained(model)
    pipe = HeadHunterPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    limits = demo_app.Limits(queue_size=args.queue_size)
    app = demo_app.build_app(demo_app.Demo(pipe, model, limits))
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    def one(i: int) -> dict:
        start = time.perf_counter()
        try:
            Client(url, verbose=False).predict("a red circle", seed=i, steps=args.steps, api_name="/generate")
            outcome, message = "served", ""
        except Exception as error:  # noqa: BLE001 (every failure is classified below)
            message = str(error)
            outcome = "queue full" if "queue is full" in message.lower() else "error"
        return {
            "client": i,
            "outcome": outcome,
            "seconds": time.perf_counter() - start,
            "message": message[:200],
        }

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(args.clients)))
    wall = time.perf_counter() - started
    after = one(-1 % 10**6)["outcome"]
    app.close()

    counts = {k: sum(r["outcome"] == k for r in results) for k in ("served", "queue full", "error")}
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    print(f"{args.clients} concurrent clients, queue size {args.queue_size}, concurrency 1, {args.steps} steps, "
          f"model {model}; {machine}")  # fmt: skip
    print(f"{'served':>8}{'queue full':>12}{'error':>8}{'wall s':>10}{'server answers after':>24}")
    print(f"{counts['served']:>8}{counts['queue full']:>12}{counts['error']:>8}{wall:>10.1f}{after:>24}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "args": vars(args), "counts": counts, "wall_seconds": wall,
              "after": after, "results": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if counts["error"] or after != "served":
        sys.exit(1)


if __name__ == "__main__":
    main()
