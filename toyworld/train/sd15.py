"""Train a small SD1.5-architecture diffusers pipeline (StableDiffusionPipeline) on the toy world, on CPU.

    python -m toyworld.train.sd15 --out assets/toy-sd15 --seed 0 --minutes 55 --threads 2 \
        --reuse assets/toy-sd3 --log results/toyworld/train-sd15-loss.jsonl

Reuses the trained toy SD3 pipeline (assets/toy-sd3): its AutoencoderKL (frozen, weights unchanged), its CLIP
BPE tokenizer (model_max_length 40) and its first CLIP text encoder's weights as the starting point of the
CLIPTextModel (SD1.5 conditions on its last hidden state, final layer norm applied). StableDiffusionPipeline
decodes `latents / scaling_factor` and ignores shift_factor, so the copied VAE config gets shift_factor=None
and scaling_factor = 1 / std of the pool's latent means, and the UNet learns `latents * scaling_factor`.

New: a small UNet2DConditionModel with cross-attention (CrossAttnDownBlock2D / CrossAttnUpBlock2D and a
cross-attention mid block), trained jointly with the text encoder under SD1.5's scaled_linear beta schedule
(0.00085 .. 0.012, 1000 steps), uniform integer timesteps. `--prediction` picks the target:
`v_prediction` (default) with the betas rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion
Noise Schedules and Sample Steps are Flawed"; SD2.x's v objective, diffusers' `rescale_betas_zero_snr` and
"trailing" DDIM spacing), or SD1.5's original `epsilon`. The architecture is SD1.5's either way; only the
scheduler config differs. With epsilon the last training step still holds 7% of the signal, while sampling
starts from pure noise, and a 5.8M-parameter UNet trained for under an hour learned colours badly (one object
0.34 colour+shape, the first toy SD1.5). 10% empty captions so classifier-free guidance (guidance_scale > 1,
empty negative prompt) works. Training sees exactly what StableDiffusionPipeline.encode_prompt feeds the UNet: `text_encoder(ids)[0]` with the
tokens padded to tokenizer.model_max_length. The pipeline is saved (with a DDIM scheduler, no safety
checker) atomically every few minutes and at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toyworld.train.loop import LossLog, encode_pool, print_saved, start_run, train_denoiser
from toyworld.train.reuse import add_reuse_arguments, load_clip, load_vae, reused_text_and_pool
from toyworld.train.tokenizer import clip_ids
from toyworld.train.writer import run_record, write_pipeline

SD15_ARCHS: dict[str, dict] = {
    "sd15": {
        "resolution": 64,  # VAE 64 -> 16x16x4 latents
        "unet": {
            "sample_size": 16,
            "block_out_channels": (64, 128, 128),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "layers_per_block": 1,
            # UNet2DConditionModel's historical naming: for SD1.x `attention_head_dim` is the number of heads
            # (SD1.5: 8). 4 heads per attention layer (dim 16 at 64 channels, 32 at 128): 8 heads of dim 8/16
            # cost ~30% more per CPU step (SDPA is slow at tiny head dims).
            "attention_head_dim": 4,
            "norm_num_groups": 16,
        },
        "sampling": {"num_inference_steps": 20, "guidance_scale": 5.0},  # swept after training
    },
}

# SD1.5's noise schedule (runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json)
SD15_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
SD15_DDIM = {**SD15_BETAS, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
# --prediction: the training noise schedule (DDPMScheduler kwargs) and the sampling DDIM config
PREDICTIONS: dict[str, tuple[dict, dict]] = {
    "epsilon": (SD15_BETAS, SD15_DDIM),
    "v_prediction": (
        {**SD15_BETAS, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
        {
            **SD15_BETAS,
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,  # unused by "trailing"; StableDiffusionPipeline warns when it is not 1
        },
    ),
}


def build_unet(cfg: dict, latent_channels: int, cross_attention_dim: int):
    """A UNet2DConditionModel with cross-attention, sized by the arch config."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        cross_attention_dim=cross_attention_dim,
        **cfg["unet"],
    )


def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """StableDiffusionPipeline.encode_prompt (clip_skip=None): last hidden states, B x max_length x D."""
    return text_encoder(clip_ids(tokenizer, prompts))[0]


def ddpm_loss(unet, text_encoder, tokenizer, prediction: str, batch: int):
    """The loss on (x0, prompts, gen): uniform integer timesteps, DDPMScheduler.add_noise, MSE to the noise
    (`epsilon`) or to DDPMScheduler.get_velocity (`v_prediction`)."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**PREDICTIONS[prediction][0])

    def loss_fn(x0: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
        embeds = encode_prompts(text_encoder, tokenizer, prompts)
        timesteps = torch.randint(SD15_BETAS["num_train_timesteps"], (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        pred = unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
        target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, timesteps)
        return F.mse_loss(pred, target)

    return loss_fn


def save_pipeline(out: Path, modules, vae, tokenizer, args, log: LossLog, status: str, steps: int) -> None:
    """Write the StableDiffusionPipeline + toyworld.json + training.json into `out` atomically."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    cfg = SD15_ARCHS[args.arch]
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=modules[1],
        tokenizer=tokenizer,
        unet=modules[0],
        scheduler=DDIMScheduler(**PREDICTIONS[args.prediction][1]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    toyworld = {
        "arch": args.arch,
        "height": cfg["resolution"],
        "width": cfg["resolution"],
        **cfg["sampling"],
        "negative_prompt": "",
        "held_out_pairs_seed": 0,
        "note": (
            "StableDiffusionPipeline (no safety checker): classifier-free guidance against the empty prompt "
            "with guidance_scale=<guidance_scale> (trained with 10% empty captions), DDIM sampling. "
            "Trained on toyworld.scenes; evaluate with toyworld.evaluator.evaluate(image, caption)."
        ),
    }
    rows = [r for r in log.rows if r.get("stage") == "denoiser"]
    training = {
        **run_record(args, status, steps, cfg, rows),
        "command": args.command,
        "prediction": args.prediction,
        "objective": (
            f"DDPM {args.prediction} (MSE to "
            + ("the noise" if args.prediction == "epsilon" else "DDPMScheduler.get_velocity")
            + ") with DDPMScheduler("
            + json.dumps(PREDICTIONS[args.prediction][0])
            + ") add_noise, uniform integer timesteps in [0, 1000); sampling scheduler DDIM "
            + json.dumps(PREDICTIONS[args.prediction][1])
        ),
        "reused": {
            "vae": (
                f"{args.reuse}/vae weights copied unchanged (frozen); config shift_factor=None, "
                f"scaling_factor={vae.config.scaling_factor:.6g} (1 / std of the pool's latent means), as "
                "StableDiffusionPipeline decodes latents / scaling_factor without a shift"
            ),
            "tokenizer": f"{args.reuse}/tokenizer (CLIP BPE, every toy word one token, model_max_length 40)",
            **reused_text_and_pool(args.reuse),
        },
    }
    write_pipeline(pipe, out, {"toyworld.json": toyworld, "training.json": training}, ("tokenizer",))
    print(f"saved {out} ({status})", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of this trainer."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_reuse_arguments(parser, SD15_ARCHS, minutes=55.0, threads=2)
    parser.add_argument(
        "--prediction",
        choices=sorted(PREDICTIONS),
        default="v_prediction",
        help="training target: v (zero terminal SNR, trailing DDIM) or SD1.5's epsilon",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    log = start_run(args, "toyworld.train.sd15", argv)
    cfg = SD15_ARCHS[args.arch]

    vae = load_vae(args.reuse)
    tokenizer, text_encoder = load_clip(args.reuse)
    unet = build_unet(cfg, vae.config.latent_channels, text_encoder.config.hidden_size)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"unet {n_unet / 1e6:.2f}M parameters, text encoder {n_text / 1e6:.2f}M", flush=True)

    scenes, latents, _, scale = encode_pool(vae, args.seed, args.pool, cfg["resolution"])
    vae.register_to_config(shift_factor=None, scaling_factor=scale)
    latents = latents * scale
    log.write(
        stage="latents",
        pool=len(scenes),
        scaling_factor=scale,
        mean=round(latents.mean().item(), 4),
        std=round(latents.std().item(), 4),
        time=round(time.time() - args.t0, 1),
    )
    remaining = args.minutes * 60 - (time.time() - args.t0) - 20  # 20 s: the final save

    def save_fn(modules, status: str, steps: int) -> None:
        save_pipeline(args.out, modules, vae, tokenizer, args, log, status, steps)

    modules = torch.nn.ModuleList([unet, text_encoder])
    loss_fn = ddpm_loss(unet, text_encoder, tokenizer, args.prediction, args.batch)
    ema, steps = train_denoiser(modules, loss_fn, scenes, latents, args, log, remaining, save_fn)
    save_fn(ema, status="complete", steps=steps)
    print_saved(args, steps)


if __name__ == "__main__":
    main()
