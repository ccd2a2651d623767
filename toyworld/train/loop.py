"""The training loop every toy trainer shares: run set-up and options, the latent pool, the time- or
step-budgeted loop, and denoiser training with AdamW, cosine learning rate, gradient clipping and an EMA."""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toyworld.scenes import caption, render, sample_scene


class LossLog:
    """Appends JSON lines {stage, step, loss, ...} to a file and keeps a running mean for the progress bar."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append or not path.exists():
            path.write_text("")
        self.rows: list[dict] = []

    def write(self, **row) -> None:
        """Record one row."""
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Run set-up
# ----------------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser, archs: dict) -> None:
    """The options of every trainer; each sets the defaults of --minutes, --lr, --pool, --save-every, --threads."""
    parser.add_argument("--arch", choices=sorted(archs), default=next(iter(archs)))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, help="wall-clock budget for all stages")
    parser.add_argument("--steps", type=int, default=0, help="denoiser steps (0: fit the time budget)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--pool", type=int, help="training scenes whose latents are cached")
    parser.add_argument("--save-every", type=float, help="minutes between checkpoints")
    parser.add_argument("--log", type=Path, default=None, help="loss log (JSON lines); default next to --out")
    parser.add_argument("--threads", type=int)


def start_run(args, module: str, argv: list[str] | None, append: bool = False) -> LossLog:
    """Note the start time and command line, seed torch, set its threads; returns the run's loss log."""
    args.t0 = time.time()
    args.command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return LossLog(args.log or args.out.parent / f"{args.out.name}-loss.jsonl", append=append)


def print_saved(args, steps: int) -> None:
    """The last line of a run."""
    print(
        f"saved {args.out} after {(time.time() - args.t0) / 60:.1f} min, {steps} denoiser steps", flush=True
    )


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def images_to_tensor(scenes, size: int) -> torch.Tensor:
    """Renders of `scenes` as a float tensor in [-1, 1], N x 3 x size x size."""
    arrays = np.stack([np.asarray(render(s, size)) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_pool(vae, seed: int, pool: int, resolution: int) -> tuple[list, torch.Tensor, float, float]:
    """`pool` training scenes rendered at `resolution` with their latent means, and the shift/scale that
    normalise them."""
    rng = random.Random(seed + 2)
    scenes = [sample_scene(rng) for _ in range(pool)]
    latents = []
    for i in tqdm(range(0, len(scenes), 256), desc="encode", mininterval=5, file=sys.stdout):
        latents.append(vae.encode(images_to_tensor(scenes[i : i + 256], resolution)).latent_dist.mean)
    latents = torch.cat(latents)
    shift, std = latents.mean().item(), latents.std().item()
    return scenes, latents, shift, 1.0 / std


def training_batch(scenes, latents, args, rng: random.Random, gen: torch.Generator) -> tuple:
    """A random batch of pool latents and their captions ("" with probability caption_dropout)."""
    idx = torch.randint(len(scenes), (args.batch,), generator=gen)
    prompts = ["" if rng.random() < args.caption_dropout else caption(scenes[i], rng) for i in idx.tolist()]
    return latents[idx], prompts


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def cosine_lr(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 10% as `progress` goes from 0 to 1."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def run_loop(step_fn, steps: int, seconds: float, desc: str, on_step) -> int:
    """Call `step_fn(progress)` until `steps` steps (if > 0) or `seconds` have passed; returns the step count.

    With a time budget, progress (for the learning-rate schedule) is the elapsed fraction of `seconds`, so
    the schedule completes however fast the shared CPU happens to be; `--steps N` reproduces a run exactly.
    """
    start, step = time.time(), 0
    if not steps and seconds <= 0:  # the budget is spent (progress would never reach 1)
        return 0
    bar = tqdm(total=steps or None, desc=desc, mininterval=10, file=sys.stdout)
    while True:
        progress = step / steps if steps else (time.time() - start) / seconds
        if progress >= 1.0:
            break
        loss = step_fn(progress)
        on_step(step, loss, bar)
        bar.update(1)
        step += 1
    bar.close()
    return step


def denoiser_setup(modules, args) -> tuple:
    """EMA copy, AdamW and the loop state of a denoiser run."""
    ema = copy.deepcopy(modules).requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    return ema, opt, {"step": 0, "running": None, "last_save": time.time()}


def optimizer_step(loss, opt, modules, ema, state: dict, args, progress: float) -> float:
    """One AdamW step with cosine LR, gradient clipping and an EMA update; returns the loss value."""
    for group in opt.param_groups:
        group["lr"] = args.lr * cosine_lr(state["step"], progress, 100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
    opt.step()
    decay = min(args.ema, (1 + state["step"]) / (10 + state["step"]))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), modules.parameters()):
            e.lerp_(p, 1 - decay)
    state["step"] += 1
    return loss.item()


def denoiser_logger(state: dict, log, opt, ema, args, save_fn):
    """The per-step callback of a denoiser run: smoothed loss, log lines, periodic checkpoints."""

    def on_step(i: int, loss: float, bar) -> None:
        running = state["running"] = (
            loss if state["running"] is None else 0.98 * state["running"] + 0.02 * loss
        )
        if i % 10 == 0:
            log.write(stage="denoiser", step=i, loss=round(loss, 5), ema_loss=round(running, 5),
                      lr=opt.param_groups[0]["lr"], time=round(time.time() - args.t0, 1))  # fmt: skip
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if time.time() - state["last_save"] > args.save_every * 60:
            save_fn(ema, status=f"checkpoint at step {i + 1} (training continues)", steps=i + 1)
            state["last_save"] = time.time()

    return on_step


def train_denoiser(
    modules: torch.nn.ModuleList,
    loss_fn: Callable,
    scenes,
    latents,
    args,
    log: LossLog,
    seconds: float,
    save_fn,
) -> tuple:
    """Train `modules` on `loss_fn(x0, prompts, gen)` over batches of the pool; returns (EMA, steps)."""
    rng = random.Random(args.seed + 3)
    gen = torch.Generator().manual_seed(args.seed + 3)
    ema, opt, state = denoiser_setup(modules, args)

    def step(progress: float) -> float:
        x0, prompts = training_batch(scenes, latents, args, rng, gen)
        return optimizer_step(loss_fn(x0, prompts, gen), opt, modules, ema, state, args, progress)

    logger = denoiser_logger(state, log, opt, ema, args, save_fn)
    return ema, run_loop(step, args.steps, seconds, "denoiser", logger)
