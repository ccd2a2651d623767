"""Train a small FLUX.1-architecture diffusers pipeline on the toy world, on CPU (one thread by default).

    python -m toyworld.train.flux --out assets/toy-flux --seed 0 --minutes 38 --threads 1 \
        --log results/toyworld/train-flux-loss.jsonl

Reuses the trained toy SD3 pipeline (assets/toy-sd3): its AutoencoderKL (frozen, copied unchanged, with its
shift/scaling factors), its CLIP BPE tokenizer, and its first CLIP text encoder's weights as the starting point
of FLUX's CLIPTextModel (FLUX uses the pooled output only, no projection). New: an offline T5 tokenizer (every
toy-world word one "▁word" piece), a small T5EncoderModel and a FluxTransformer2DModel (double- and
single-stream blocks, RoPE, guidance_embeds=False), trained jointly from the latent pool with the
rectified-flow loss of toyworld.train.sd3: x_t = (1 - t) x_0 + t eps, target eps - x_0, 10% empty captions so
the pipeline's true CFG (true_cfg_scale > 1 with negative_prompt="") works.

Training sees exactly what FluxPipeline feeds the transformer: latents packed into 2x2 patches
(FluxPipeline._pack_latents), img_ids from FluxPipeline._prepare_latent_image_ids, txt_ids zeros, T5 tokens
padded to max_sequence_length, timestep in [0, 1]. Timesteps: logit-normal t mapped through the same
exponential time shift the scheduler applies at sampling (use_dynamic_shifting=True with FLUX.1's config;
mu = calculate_shift(image_seq_len) = 0.4675 for 64x64 images, i.e. a shift of exp(mu) = 1.60).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toyworld.train.loop import encode_pool, print_saved, start_run, train_denoiser
from toyworld.train.reuse import add_reuse_arguments, load_clip, load_vae, reused_text_and_pool
from toyworld.train.tokenizer import build_t5_tokenizer, clip_ids
from toyworld.train.writer import run_record, write_pipeline

FLUX_ARCHS: dict[str, dict] = {
    "flux": {
        "resolution": 64,  # VAE 64 -> 16x16x4 latents -> 8x8 packed tokens of 16 channels
        "max_sequence_length": 36,  # T5 tokens (padded); the longest toy caption is 34 pieces + </s>
        "t5": {"d_model": 64, "d_kv": 16, "d_ff": 256, "num_layers": 3, "num_heads": 4},
        "transformer": {
            "patch_size": 1,
            "num_layers": 2,
            "num_single_layers": 5,
            "num_attention_heads": 8,
            "attention_head_dim": 16,
            "axes_dims_rope": (4, 6, 6),
            "guidance_embeds": False,
        },
        "sampling": {
            "num_inference_steps": 20,
            "true_cfg_scale": 2.5,
        },  # swept after training (toyworld.json)
    },
}

# FLUX.1's scheduler config (black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json)
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_t5(cfg: dict, tokenizer):
    """A small T5EncoderModel (hidden = the transformer's joint_attention_dim)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **cfg["t5"],
    )
    return T5EncoderModel(config)


def build_transformer(cfg: dict, latent_channels: int, joint_dim: int, pooled_dim: int):
    """A FluxTransformer2DModel sized by the arch config."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        in_channels=4 * latent_channels,
        joint_attention_dim=joint_dim,
        pooled_projection_dim=pooled_dim,
        **cfg["transformer"],
    )


def time_shift_mu(image_seq_len: int) -> float:
    """FluxPipeline's mu for this image sequence length with FLUX.1's scheduler config."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    s = FLUX_SCHEDULER
    return calculate_shift(
        image_seq_len, s["base_image_seq_len"], s["max_image_seq_len"], s["base_shift"], s["max_shift"]
    )


def shift_t(t: torch.Tensor, mu: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's exponential time shift (sigma = 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


class TextEncoders(torch.nn.Module):
    """CLIP (pooled) + T5 (sequence) exactly as FluxPipeline.encode_prompt uses them."""

    def __init__(self, clip, t5, clip_tokenizer, t5_tokenizer, max_sequence_length: int):
        super().__init__()
        self.clip, self.t5 = clip, t5
        self.clip_tokenizer, self.t5_tokenizer = clip_tokenizer, t5_tokenizer
        self.max_sequence_length = max_sequence_length

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 hidden states B x L x D, CLIP pooled output B x H)."""
        t5_ids = self.t5_tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.clip(clip_ids(self.clip_tokenizer, prompts), output_hidden_states=False).pooler_output
        embeds = self.t5(t5_ids, output_hidden_states=False)[0]
        return embeds, pooled


def pack(latents: torch.Tensor) -> torch.Tensor:
    """FluxPipeline._pack_latents."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def rectified_flow_loss(transformer, text: TextEncoders, latent_size: tuple[int, int], mu: float, batch: int):
    """The loss on (x0, prompts, gen) for what FluxPipeline feeds the transformer: logit-normal t shifted by
    `mu`, x_t = (1 - t) x_0 + t eps, MSE to eps - x_0 on packed latents."""
    from diffusers import FluxPipeline

    h, w = latent_size
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(text.max_sequence_length, 3)

    def loss_fn(x0: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
        embeds, pooled = text(prompts)
        t = shift_t(torch.sigmoid(torch.randn(batch, generator=gen)), mu)  # logit-normal, shifted
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        pred = transformer(
            hidden_states=pack(xt),
            timestep=t,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return F.mse_loss(pred, pack(noise - x0))

    return loss_fn


def save_pipeline(out: Path, modules, vae, clip_tokenizer, t5_tokenizer, args, log, status: str, steps: int):
    """Write the FluxPipeline + toyworld.json + training.json into `out` atomically (temp folder, rename)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    cfg = FLUX_ARCHS[args.arch]
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=modules[1],
        tokenizer=clip_tokenizer,
        text_encoder_2=modules[2],
        tokenizer_2=t5_tokenizer,
        transformer=modules[0],
    )
    toyworld = {
        "arch": args.arch,
        "height": cfg["resolution"],
        "width": cfg["resolution"],
        "num_inference_steps": cfg["sampling"]["num_inference_steps"],
        "guidance_scale": cfg["sampling"]["true_cfg_scale"],
        "true_cfg_scale": cfg["sampling"]["true_cfg_scale"],
        "negative_prompt": "",
        "max_sequence_length": cfg["max_sequence_length"],
        "held_out_pairs_seed": 0,
        "note": (
            "FluxPipeline without guidance embedding: pass true_cfg_scale=<true_cfg_scale>, negative_prompt='' and "
            "max_sequence_length=<max_sequence_length> (trained with exactly that many padded T5 tokens). "
            "Trained on toyworld.scenes; evaluate with toyworld.evaluator.evaluate(image, caption)."
        ),
    }
    rows = [r for r in log.rows if r.get("stage") == "denoiser"]
    training = {
        **run_record(args, status, steps, cfg, rows),
        "command": args.command,
        "scheduler": FLUX_SCHEDULER,
        "timesteps": (
            "logit-normal(0, 1) t mapped through the scheduler's exponential time shift with "
            f"mu = calculate_shift({(cfg['resolution'] // 8) ** 2}) = {args.mu:.4f} (the mu FluxPipeline uses "
            "at this resolution), so training and sampling use the same dynamic shifting"
        ),
        "reused": {
            "vae": f"{args.reuse}/vae copied unchanged (frozen; its shift_factor/scaling_factor normalise latents)",
            "tokenizer": f"{args.reuse}/tokenizer (CLIP BPE, every toy word one token)",
            **reused_text_and_pool(args.reuse),
        },
    }
    files = {"toyworld.json": toyworld, "training.json": training}
    write_pipeline(pipe, out, files, ("tokenizer",))
    print(f"saved {out} ({status})", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of this trainer."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_reuse_arguments(parser, FLUX_ARCHS, minutes=38.0, threads=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    log = start_run(args, "toyworld.train.flux", argv)
    cfg = FLUX_ARCHS[args.arch]

    vae = load_vae(args.reuse)
    clip_tokenizer, clip = load_clip(args.reuse)
    t5_tokenizer = build_t5_tokenizer()
    t5 = build_t5(cfg, t5_tokenizer)
    text = TextEncoders(clip, t5, clip_tokenizer, t5_tokenizer, cfg["max_sequence_length"])
    transformer = build_transformer(
        cfg, vae.config.latent_channels, t5.config.d_model, clip.config.hidden_size
    )
    n_params = sum(p.numel() for p in transformer.parameters())
    print(f"transformer {n_params / 1e6:.2f}M parameters", flush=True)

    scenes, latents, _, _ = encode_pool(vae, args.seed, args.pool, cfg["resolution"])
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    args.mu = time_shift_mu((latents.shape[-1] // 2) * (latents.shape[-2] // 2))
    log.write(
        stage="latents",
        pool=len(scenes),
        mean=round(latents.mean().item(), 4),
        std=round(latents.std().item(), 4),
        mu=args.mu,
        time=round(time.time() - args.t0, 1),
    )
    remaining = args.minutes * 60 - (time.time() - args.t0) - 20  # 20 s: the final save

    def save_fn(modules, status: str, steps: int) -> None:
        save_pipeline(args.out, modules, vae, clip_tokenizer, t5_tokenizer, args, log, status, steps)

    modules = torch.nn.ModuleList([transformer, text.clip, text.t5])
    loss_fn = rectified_flow_loss(transformer, text, tuple(latents.shape[-2:]), args.mu, args.batch)
    ema, steps = train_denoiser(modules, loss_fn, scenes, latents, args, log, remaining, save_fn)
    save_fn(ema, status="complete", steps=steps)
    print_saved(args, steps)


# ----------------------------------------------------------------------------------------------------------
# Measurement with the model-free evaluator
# ----------------------------------------------------------------------------------------------------------


def load_flux(folder: Path):
    """FluxPipeline and its toyworld.json settings."""
    from diffusers import FluxPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, json.loads((Path(folder) / "toyworld.json").read_text())


def generate_flux(pipe, settings: dict, prompts: list[str], seeds: list[int], cfg: float, batch: int) -> list:
    """One image per (prompt, seed) with true CFG against the empty prompt."""
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        images += pipe(
            prompt=chunk,
            negative_prompt=[settings.get("negative_prompt", "")] * len(chunk),
            true_cfg_scale=cfg,
            num_inference_steps=settings["num_inference_steps"],
            height=settings["height"],
            width=settings["width"],
            max_sequence_length=settings["max_sequence_length"],
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + batch]],
        ).images
    return images


SUMMARY_KEYS = ("correct", "binding", "presence", "position", "count", "score", "quality")


def summarise(scores: list[dict]) -> dict:
    """Mean of each evaluator field over the images where it applies, rounded to 4 places."""
    return {
        k: round(
            sum(s[k] for s in scores if s[k] is not None) / max(1, sum(s[k] is not None for s in scores)), 4
        )
        for k in SUMMARY_KEYS
    }


def save_grid(images: list, prompts: list[str], seeds: int, path: Path) -> None:
    """The first seed's image of the first 32 prompts as a PNG grid (2x nearest), their prompts in a .txt."""
    from PIL import Image

    grid = Image.new("RGB", (8 * 64, 4 * 64), "white")
    for j, im in enumerate(images[: 32 * seeds : seeds]):
        grid.paste(im.resize((64, 64)), ((j % 8) * 64, (j // 8) * 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST).save(path)
    path.with_suffix(".txt").write_text(
        "".join(f"{j}: {p}\n" for j, p in enumerate(prompts[: 32 * seeds : seeds]))
    )


def measure_set(pipe, settings: dict, args, cfg: float, n_objects: int) -> tuple[dict, list, list[str]]:
    """Summary scores of one prompt set (`n_objects` per scene) at true CFG `cfg`, its images and prompts."""
    from toyworld.evaluator import evaluate
    from toyworld.scenes import canonical_caption, sample_scene

    scenes = [
        sample_scene(args.first_seed + i, "train", n_objects=n_objects, style_prob=0)
        for i in range(args.prompts)
    ]
    prompts = [canonical_caption(s) for s in scenes for _ in range(args.seeds)]
    seeds = [k for _ in scenes for k in range(args.seeds)]
    images = generate_flux(pipe, settings, prompts, seeds, cfg, args.batch)
    summary = summarise([evaluate(im, p) for im, p in zip(images, prompts)])
    summary["n_images"] = len(images)
    return summary, images, prompts


def parse_measure_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of `measure`."""
    parser = argparse.ArgumentParser(prog="python -m toyworld.train.flux measure")
    parser.add_argument("--model", type=Path, default=Path("assets/toy-flux"))
    parser.add_argument("--out", type=Path, default=Path("results/toyworld/quality-flux.json"))
    parser.add_argument("--prompts", type=int, default=100, help="held-in prompts per set")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument(
        "--first-seed", type=int, default=10**6, help="scene seeds first-seed, first-seed+1, ..."
    )
    parser.add_argument(
        "--true-cfg-scale", type=float, nargs="+", default=None, help="default: toyworld.json"
    )
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--samples", type=Path, default=None, help="PNG grid of the first images of each set")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def measure(argv: list[str] | None = None) -> None:
    """`python -m toyworld.train.flux measure --model assets/toy-flux`: correct (1 object) / bound (2)."""
    args = parse_measure_args(argv)
    torch.set_num_threads(args.threads)
    pipe, settings = load_flux(args.model)
    scales = args.true_cfg_scale or [settings["true_cfg_scale"]]
    result = {
        "model": str(args.model),
        "command": "python -m toyworld.train.flux measure "
        + " ".join(argv if argv is not None else sys.argv[2:]),
        "prompts": "canonical_caption(sample_scene(first_seed + i, 'train', n_objects=n, style_prob=0))",
        "first_seed": args.first_seed,
        "n_prompts": args.prompts,
        "seeds_per_prompt": args.seeds,
        "settings": settings,
        "runs": [],
    }
    start = time.time()
    for cfg in scales:
        run = {"true_cfg_scale": cfg}
        for name, n_objects, key in (("single", 1, "correct"), ("two", 2, "binding")):
            run[name], images, prompts = measure_set(pipe, settings, args, cfg, n_objects)
            print(f"true_cfg={cfg} {name}: {key}={run[name][key]} " + json.dumps(run[name]), flush=True)
            if args.samples and cfg == scales[0]:
                save_grid(
                    images, prompts, args.seeds, args.samples.with_name(f"{args.samples.stem}-{name}.png")
                )
        result["runs"].append(run)
    result["elapsed_s"] = round(time.time() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2:])
    else:
        main()
