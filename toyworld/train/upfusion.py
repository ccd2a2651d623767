"""Train the toy UpFusion pipeline (UpSRT, then the scene-conditioned diffusion model) on CPU or several devices.

    python -m toyworld.train.upfusion --stage both --out assets/toy-upfusion --minutes 50 --seed 0
    accelerate launch -m toyworld.train.upfusion --stage diffusion --out DIR --resume

Stage 1 (`upsrt`) trains UpSRT alone with L2 on the colours of random query rays (UpFusion Sec. 3.1). Stage 2
(`diffusion`) freezes UpSRT and trains the UNet, the zero-initialised ControlNet and the query-ray term of the
scene-token attention with the v-prediction loss; condition dropout (no scene tokens and no hint: 10%; no
scene tokens only: 10%) gives classifier-free guidance and makes the no-scene-attention ablation a condition the
model has seen. Data: `--data toy` renders a pool of training-split objects from toyworld.views (cached under
the checkpoint folder), `--data co3d:PATH` reads CO3Dv2-style folders through toyworld.co3d.

Checkpoints (every `--save-every` minutes and at the end of a stage) go to OUT/checkpoint: model weights,
optimizer state and EMA as safetensors, and state.json (stage, step, seconds used, seeds). `--resume` continues
from there. Batches are drawn from (seed, stage, step, process), so a resumed run draws what the killed run
would have. The final pipeline is written atomically with save_pretrained (temp folder, then rename).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from guidance.cameras import relative_cameras
from guidance.upfusion import SceneCall
from pipelines.upfusion import MAX_VIEWS, UpFusionPipeline, build_upfusion, denoiser_output, diffusion_hint

STAGES = ("upsrt", "diffusion")

# ----------------------------------------------------------------------------------------------------------
# Data: a pool of multi-view renders
# ----------------------------------------------------------------------------------------------------------


def toy_pool(objects: int, views: int, size: int, cache: Path) -> dict[str, torch.Tensor]:
    """`views` renders of the first `objects` training-split objects: images (O, V, 3, S, S) uint8, c2w, focal."""
    from toyworld.views import sample_views, split_of, split_seeds

    if cache.exists():
        pool = load_file(cache)
        if tuple(pool["images"].shape[:2]) != (objects, views) or pool["images"].shape[-1] != size:
            raise SystemExit(
                f"{cache} holds {tuple(pool['images'].shape[:2])} objects x views at "
                f"{pool['images'].shape[-1]} px, not --objects {objects} --views {views} at {size} px: "
                "delete it or pass the sizes it was rendered with"
            )
        return pool
    seeds = split_seeds("train", objects)
    assert all(split_of(s) == "train" for s in seeds)
    images, poses = [], []
    for seed in tqdm(seeds, desc="rendering the training pool", mininterval=5):
        data = sample_views(seed, views, size, seed=0)
        images.append((data["images"] * 255).round().to(torch.uint8))
        poses.append(data["c2w"])
    pool = {"images": torch.stack(images), "c2w": torch.stack(poses), "focal": torch.tensor(data["focal"])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(pool, str(cache))
    return pool


def co3d_pool(root: str, objects: int, views: int, size: int) -> dict[str, torch.Tensor]:
    """The same pool from CO3Dv2-style folders (toyworld.co3d.Co3dViews); needs cameras (c2w, focal) per item."""
    from toyworld.co3d import Co3dViews

    data = Co3dViews(root, size=size, views=views, seed=0)
    items = [data[i] for i in range(min(objects, len(data)))]
    if not items or "c2w" not in items[0] or "focal" not in items[0]:
        raise ValueError(
            f"--data co3d:{root}: the items need 'images', 'c2w' and 'focal' to supervise query views"
        )
    return {
        "images": torch.stack([(x["images"] * 255).round().to(torch.uint8) for x in items]),
        "c2w": torch.stack([torch.as_tensor(x["c2w"], dtype=torch.float32) for x in items]),
        "focal": torch.tensor(float(items[0]["focal"])),
    }


def draw_batch(
    pool: dict, batch: int, queries: int, rng: random.Random, input_queries: float = 0.0
) -> dict[str, torch.Tensor]:
    """Objects, 1-6 input views and `queries` other views; query cameras relative to the first input view.

    input_queries: the chance that a query is one of the input views instead (reconstructing what the model
    was shown teaches the decoder where to look before novel views can; SRT renders input views too)."""
    total_views = pool["images"].shape[1]
    n_inputs = rng.randint(1, min(MAX_VIEWS, total_views - queries))
    inputs, targets, cameras = [], [], []
    for _ in range(batch):
        obj = rng.randrange(pool["images"].shape[0])
        order = rng.sample(range(total_views), n_inputs + queries)
        views, query = order[:n_inputs], order[n_inputs:]
        if input_queries > 0:
            query = [rng.choice(views) if rng.random() < input_queries else q for q in query]
        inputs.append(pool["images"][obj, views])
        targets.append(pool["images"][obj, query])
        cameras.append(relative_cameras(pool["c2w"][obj, query], pool["c2w"][obj, views[0]]))
    return {
        "inputs": torch.stack(inputs).float() / 255,  # (B, N, 3, S, S)
        "targets": torch.stack(targets).float() / 255,  # (B, Q, 3, S, S)
        "query_c2w": torch.stack(cameras),  # (B, Q, 4, 4)
    }


# ----------------------------------------------------------------------------------------------------------
# One training step of each stage (also used by the tests)
# ----------------------------------------------------------------------------------------------------------


def upsrt_loss(
    pipe: UpFusionPipeline, batch: dict, rays_per_view: int, generator: torch.Generator
) -> torch.Tensor:
    """Stage 1: L2 between UpSRT's colours and the ground truth on random query rays (UpSRT/SRT training)."""
    upsrt = pipe.upsrt
    scene = upsrt.encode(batch["inputs"])
    rays = upsrt.query_rays(batch["query_c2w"]).permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, Q*S*S, 6)
    colours = batch["targets"].permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, Q*S*S, 3)
    # drawn on the CPU generator (resume-exact on any device), then moved to the batch's device
    pick = torch.rand(rays.shape[:2], generator=generator).argsort(dim=1)[:, :rays_per_view].to(rays.device)
    rgb, _ = upsrt.decode_rays(scene, rays.gather(1, pick[..., None].expand(-1, -1, 6)))
    return F.mse_loss(rgb, colours.gather(1, pick[..., None].expand(-1, -1, 3)))


def diffusion_loss(
    pipe: UpFusionPipeline,
    batch: dict,
    generator: torch.Generator,
    drop_all: float = 0.1,
    drop_scene: float = 0.1,
) -> torch.Tensor:
    """Stage 2: v-prediction loss of the UNet + ControlNet given UpSRT's scene tokens and hint (one query per row)."""
    upsrt, scheduler = pipe.upsrt, pipe.scheduler
    query = batch["query_c2w"][:, 0]
    with torch.no_grad():
        scene = upsrt.encode(batch["inputs"])
        _, features = upsrt.render(scene, query[:, None])
        hint = diffusion_hint(upsrt, features[:, 0], query)
    rows = query.shape[0]
    x0 = batch["targets"][:, 0] * 2 - 1
    device = x0.device  # draws on the CPU generator (resume-exact on any device), moved to the batch's device
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (rows,), generator=generator).to(device)
    u = torch.rand(rows, generator=generator).to(device)
    keep_hint = (u >= drop_all).float()  # classifier-free guidance: no scene, no hint
    keep_scene = (u >= drop_all + drop_scene).float()  # the ablation's condition: hint only
    call = SceneCall(query, upsrt.config.focal, upsrt.config.image_size, keep_scene)
    with pipe.scene_attention(call):
        prediction = denoiser_output(
            pipe.unet,
            pipe.controlnet,
            scheduler.add_noise(x0, noise, t),
            t,
            scene,
            hint * keep_hint[:, None, None, None],
        )
    return F.mse_loss(prediction, scheduler.get_velocity(x0, noise, t))


def trainable(pipe: UpFusionPipeline, stage: str) -> dict[str, torch.nn.Module]:
    """The modules a stage trains."""
    if stage == "upsrt":
        return {"upsrt": pipe.upsrt}
    return {"unet": pipe.unet, "controlnet": pipe.controlnet, "ray_queries": pipe.ray_queries}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON only
# ----------------------------------------------------------------------------------------------------------


def flat_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """{"module.param": tensor} of several modules (contiguous copies, as safetensors wants)."""
    return {
        f"{k}.{n}": t.detach().contiguous().clone()
        for k, m in modules.items()
        for n, t in m.state_dict().items()
    }


def load_flat_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Inverse of flat_state."""
    for key, module in modules.items():
        module.load_state_dict({n[len(key) + 1 :]: t for n, t in state.items() if n.startswith(f"{key}.")})


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer state dict as safetensors tensors ("index.name") plus JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {
        f"{i}.{k}": torch.as_tensor(v).contiguous().clone()
        for i, s in sd["state"].items()
        for k, v in s.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
) -> None:
    """Inverse of optimizer_tensors."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(folder: Path, pipe, optimizer, ema: dict | None, state: dict) -> None:
    """Write OUT/checkpoint atomically: weights of every stage so far, this stage's optimizer and EMA, state.json."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(flat_state({"upsrt": pipe.upsrt}), str(tmp / "upsrt.safetensors"))
    save_file(flat_state(trainable(pipe, "diffusion")), str(tmp / "diffusion.safetensors"))
    tensors, groups = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "param_groups": groups}, indent=1) + "\n")
    if (pool := folder / "pool.safetensors").exists():
        os.link(pool, tmp / "pool.safetensors")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: Path) -> None:
    """Finish what a kill inside save_checkpoint left: `folder` complete, or else its complete `.old` copy.

    save_checkpoint writes `.tmp` whole, moves `folder` to `.old`, then `.tmp` to `folder`: a kill between the two
    renames leaves no `folder`, and `.old` is the last complete checkpoint. A `.tmp` may be half-written."""
    old, tmp = folder.with_name(folder.name + ".old"), folder.with_name(folder.name + ".tmp")
    if not folder.exists() and (old / "state.json").exists():
        old.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def pipeline_from_checkpoint(folder: str | Path) -> tuple[UpFusionPipeline, dict]:
    """The pipeline a checkpoint folder (OUT/checkpoint) holds, and its state.json (for evaluating mid-training)."""
    from toyworld.views import DISTANCE, default_focal

    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    pipe = build_upfusion(state.get("config", "toy"), seed=state.get("seed", 0), distance=DISTANCE)
    load_flat_state({"upsrt": pipe.upsrt}, load_file(folder / "upsrt.safetensors"))
    load_flat_state(trainable(pipe, "diffusion"), load_file(folder / "diffusion.safetensors"))
    pipe.upsrt.register_to_config(focal=default_focal(pipe.upsrt.config.image_size))
    return pipe, state


def write_pipeline(pipe: UpFusionPipeline, out: Path, record: dict) -> None:
    """save_pretrained into a temp folder with training.json, then swap it in by renaming (never half-written)."""
    tmp, old = (
        out.with_name(f".{out.name}.tmp-{os.getpid()}"),
        out.with_name(f".{out.name}.old-{os.getpid()}"),
    )
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    checkpoint = out / "checkpoint"
    if checkpoint.exists():
        checkpoint.rename(tmp / "checkpoint")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def step_rng(seed: int, stage: str, step: int, process: int) -> tuple[random.Random, torch.Generator]:
    """The batch's random sources, fixed by (seed, stage, step, process) so that a resumed run repeats them."""
    key = f"upfusion/{seed}/{stage}/{step}/{process}"
    return random.Random(key), torch.Generator().manual_seed(hash_seed(key))


def hash_seed(key: str) -> int:
    """A stable 63-bit seed from a string (Python's hash() is salted per process)."""
    return int.from_bytes(__import__("hashlib").sha256(key.encode()).digest()[:8], "little") >> 1


def lr_factor(step: int, seconds: float, budget: float, args) -> float:
    """Linear warm-up over `--warmup` steps, then cosine decay to 0.1 over `--schedule-steps` steps (stable
    across resumed sessions) or, when that is 0, over the stage's time budget."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    progress = step / args.schedule_steps if args.schedule_steps > 0 else seconds / budget
    return warm * (0.55 + 0.45 * math.cos(math.pi * min(1.0, progress)))


def train_stage(pipe, stage: str, args, accelerator: Accelerator, pool: dict, state: dict, log) -> None:
    """Train one stage for its share of the time budget (continuing `state` on resume)."""
    modules = trainable(pipe, stage)
    for module in (pipe.upsrt, pipe.unet, pipe.controlnet, pipe.ray_queries):
        module.requires_grad_(False).eval()
    for module in modules.values():
        module.requires_grad_(True).train()
    params = [p for m in modules.values() for p in m.parameters()]
    lr = args.lr_upsrt if stage == "upsrt" else args.lr_diffusion
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = {f"{k}.{n}": p.detach().clone() for k, m in modules.items() for n, p in m.named_parameters()}
    if stage == "upsrt":
        ema = None  # UpSRT regresses colours; its last weights are used directly
    checkpoint = args.out / "checkpoint"
    if state.get("stage") == stage and (checkpoint / "optimizer.safetensors").exists():
        groups = json.loads((checkpoint / "state.json").read_text())["param_groups"]
        load_optimizer(optimizer, load_file(checkpoint / "optimizer.safetensors"), groups)
        if ema is not None and (checkpoint / "ema.safetensors").exists():
            saved = load_file(checkpoint / "ema.safetensors")
            ema = {k: v.to(ema[k].device) for k, v in saved.items()}  # onto the parameters' device
    else:
        state.update(stage=stage, step=0, seconds=0.0, cpu_seconds=0.0)
    state.setdefault("stage_args", {})[stage] = {
        "lr": lr, "batch": args.batch, "warmup": args.warmup, "schedule_steps": args.schedule_steps,
        **({"rays": args.rays, "queries": args.queries, "input_queries": args.input_queries}
           if stage == "upsrt" else {}),
    }  # fmt: skip
    budget = args.minutes * 60 * (args.upsrt_share if stage == "upsrt" else 1 - args.upsrt_share)
    if args.stage != "both":
        budget = args.minutes * 60
    bar = tqdm(desc=stage, initial=state["step"], disable=not accelerator.is_main_process, mininterval=10)
    start, last_save, running = time.time() - state["seconds"], time.time(), None
    cpu_start = time.process_time() - state.get("cpu_seconds", 0.0)  # CPU time of this process (all threads)
    named = {f"{k}.{n}": p for k, m in modules.items() for n, p in m.named_parameters()}
    while time.time() - start < budget and (args.max_steps == 0 or state["step"] < args.max_steps):
        rng, gen = step_rng(args.seed, stage, state["step"], accelerator.process_index)
        if stage == "upsrt":
            batch = draw_batch(pool, args.batch, args.queries, rng, args.input_queries)
        else:
            batch = draw_batch(pool, args.batch, 1, rng)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(state["step"], time.time() - start, budget, args)
        if stage == "upsrt":
            loss = upsrt_loss(pipe, batch, args.rays, gen)
        else:
            loss = diffusion_loss(pipe, batch, gen)
        accelerator.backward(loss)
        if accelerator.num_processes > 1:  # data parallel: average the gradients of every process
            for p in params:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            decay = min(args.ema, (1 + state["step"]) / (10 + state["step"]))
            for key, p in named.items():
                ema[key].lerp_(p.detach(), 1 - decay)
        state["step"] += 1
        state["seconds"], state["cpu_seconds"] = time.time() - start, time.process_time() - cpu_start
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update()
        bar.set_postfix(loss=f"{running:.4f}")
        if state["step"] % 25 == 0:
            log(
                {
                    "stage": stage,
                    "step": state["step"],
                    "loss": loss.item(),
                    "ema_loss": running,
                    "s": state["seconds"],
                }
            )
        if time.time() - last_save > args.save_every * 60 and accelerator.is_main_process:
            save_checkpoint(checkpoint, pipe, optimizer, ema, state)
            last_save = time.time()
    bar.close()
    if ema is not None:
        for key, p in named.items():
            p.data.copy_(ema[key])  # the stage's result is its EMA weights
    state.update(done=state.get("done", []) + [stage], final_loss=running)
    state[f"{stage}_steps"], state[f"{stage}_seconds"], state[f"{stage}_final_loss"] = (
        state["step"], round(state["seconds"], 1), running,
    )  # fmt: skip
    state[f"{stage}_cpu_seconds"] = round(state.get("cpu_seconds", 0.0), 1)
    if accelerator.is_main_process:
        save_checkpoint(checkpoint, pipe, optimizer, None, {**state, "stage": f"{stage}-done"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=(*STAGES, "both"), default="both")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--minutes", type=float, default=50.0, help="wall-clock budget (both stages together)"
    )
    parser.add_argument(
        "--upsrt-share", type=float, default=0.4, help="share of --minutes for stage 1 with --stage both"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--data", default="toy", help="toy (renders toyworld.views) or co3d:PATH")
    parser.add_argument("--config", default="toy", help="a named configuration of pipelines.upfusion.CONFIGS")
    parser.add_argument("--objects", type=int, default=1000, help="training objects in the pool")
    parser.add_argument("--views", type=int, default=8, help="views per object in the pool")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rays", type=int, default=256, help="query rays per object in stage 1")
    parser.add_argument("--queries", type=int, default=2, help="query views per object in stage 1")
    parser.add_argument(
        "--input-queries", type=float, default=0.0, help="stage 1: chance that a query is an input view"
    )
    parser.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    parser.add_argument(
        "--schedule-steps", type=int, default=0,
        help="cosine decay length in steps (0: over the stage's time budget)",
    )  # fmt: skip
    parser.add_argument("--lr-upsrt", type=float, default=4e-4)
    parser.add_argument("--lr-diffusion", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument(
        "--max-steps", type=int, default=0, help="stop a stage after this many steps (0: time only)"
    )
    parser.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (on a shared 2-core machine 2 threads thrashed 20x)",
    )
    args = parser.parse_args(argv)
    args.command = "python -m toyworld.train.upfusion " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> UpFusionPipeline:
    """Run the requested stages, then write the pipeline with training.json."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    accelerator = Accelerator()
    checkpoint = args.out / "checkpoint"
    recover_checkpoint(checkpoint)
    state: dict = {"seed": args.seed}
    pipe = None
    if args.resume or args.stage == "diffusion":
        source = checkpoint if (checkpoint / "state.json").exists() else None
        if source is None and args.resume:
            raise SystemExit(f"--resume: no checkpoint in {checkpoint}")
        if source is None and args.stage == "diffusion":
            raise SystemExit(
                f"--stage diffusion needs stage 1's checkpoint in {checkpoint} (run --stage upsrt first)"
            )
        state = json.loads((checkpoint / "state.json").read_text())
        state.pop("param_groups", None)
        args.config = state.get("config", args.config)
    overrides = {}
    if args.data == "toy":
        from toyworld.views import DISTANCE

        overrides["distance"] = DISTANCE
    pipe = build_upfusion(args.config, seed=args.seed, **overrides)
    size = pipe.upsrt.config.image_size
    if (checkpoint / "upsrt.safetensors").exists() and (args.resume or args.stage == "diffusion"):
        load_flat_state({"upsrt": pipe.upsrt}, load_file(checkpoint / "upsrt.safetensors"))
        load_flat_state(trainable(pipe, "diffusion"), load_file(checkpoint / "diffusion.safetensors"))
    if args.data == "toy":
        pool = toy_pool(args.objects, args.views, size, checkpoint / "pool.safetensors")
    elif args.data.startswith("co3d:"):
        pool = co3d_pool(args.data.removeprefix("co3d:"), args.objects, args.views, size)
    else:
        raise SystemExit(f"--data must be toy or co3d:PATH; got {args.data!r}")
    pipe.upsrt.register_to_config(focal=float(pool["focal"]))
    pipe.to(accelerator.device)
    state.update(config=args.config, commands=state.get("commands", []) + [args.command])
    log_path = args.out.with_name(args.out.name + "-loss.jsonl")

    def log(row: dict) -> None:
        if accelerator.is_main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    t0 = time.time()
    stages = STAGES if args.stage == "both" else (args.stage,)
    for stage in stages:
        if f"{stage}" in state.get("done", []):
            continue
        train_stage(pipe, stage, args, accelerator, pool, state, log)
    pipe.to("cpu")
    if accelerator.is_main_process:
        record = {
            "command": args.command,
            "commands": state["commands"],
            "seed": args.seed,
            "seeds": {"torch": args.seed, "batches": "sha256(upfusion/{seed}/{stage}/{step}/{process})"},
            "config": args.config,
            "data": args.data,
            "objects": args.objects,
            "views": args.views,
            "batch": args.batch,
            "threads": args.threads,
            "lr": {"upsrt": args.lr_upsrt, "diffusion": args.lr_diffusion},
            "stage_args": state.get("stage_args", {}),  # each stage's own settings (its last run)
            "session_seconds": round(time.time() - t0, 1),
            "processes": accelerator.num_processes,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            **{k: v for k, v in state.items() if k.endswith(("_steps", "_seconds", "_final_loss"))},
        }
        write_pipeline(pipe, args.out, record)
        print(f"saved {args.out}: {record}", flush=True)
    return pipe


if __name__ == "__main__":
    main()
