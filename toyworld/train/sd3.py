"""Train a small SD3-architecture diffusers pipeline (StableDiffusion3Pipeline) on the toy world, on CPU.

    python -m toyworld.train.sd3 --arch sd3 --out assets/toy-sd3 --seed 0 --minutes 50

Stages: (1) an offline CLIP BPE tokenizer whose every toy-world word is one token; (2) a small AutoencoderKL
trained on renders (L1 reconstruction + a light KL); (3) latents of a pool of training scenes; (4) the
denoiser and both CLIP text encoders trained jointly with the rectified-flow loss of SD3 (Esser et al. 2024):
x_t = (1 - t) x_0 + t eps, target eps - x_0, logit-normal t, 10% empty captions for classifier-free guidance.
The pipeline is saved atomically (temp folder, then rename) every few minutes and at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toyworld.inference import RepeatedTokenJointAttnProcessor
from toyworld.scenes import sample_scene
from toyworld.train.loop import (
    LossLog,
    add_run_arguments,
    cosine_lr,
    encode_pool,
    images_to_tensor,
    print_saved,
    run_loop,
    start_run,
    train_denoiser,
)
from toyworld.train.tokenizer import build_clip_tokenizer, build_t5_tokenizer, clip_ids
from toyworld.train.writer import write_pipeline

# ----------------------------------------------------------------------------------------------------------
# Named configurations (one table; an architecture flag selects a row)
# ----------------------------------------------------------------------------------------------------------

SD3_ARCHS: dict[str, dict] = {
    "sd3": {
        "resolution": 64,
        "max_text_length": 40,
        # zero "T5" tokens: training mixes 1 (recommended, fast) and 256 (StableDiffusion3Pipeline's default)
        "t5_pad_tokens": (1, 256),
        "t5_pad_mix": 0.7,  # share of rows trained with the first count
        "vae": {
            "block_out_channels": (16, 32, 64),  # 64x64 image -> 16x16 latent
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 8,
        },
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
        "transformer": {
            "patch_size": 2,
            "num_layers": 8,
            "num_attention_heads": 8,
            "attention_head_dim": 16,
            "qk_norm": "rms_norm",  # as SD3.5: keeps attention logits bounded at the higher learning rate
        },
        "sampling": {"num_inference_steps": 20, "guidance_scale": 4.0},
    },
}
# The same model 1.5x as deep: 12 MMDiT blocks, meant to start from a trained `sd3` with --init-from (its 8
# blocks kept, 4 identity blocks inserted between them), for the depth question of docs/toyworld.md.
SD3_ARCHS["sd3-deep"] = copy.deepcopy(SD3_ARCHS["sd3"])
SD3_ARCHS["sd3-deep"]["transformer"]["num_layers"] = 12


# ----------------------------------------------------------------------------------------------------------
# Models from configs
# ----------------------------------------------------------------------------------------------------------


def build_vae(cfg: dict):
    """A small AutoencoderKL from the arch config."""
    from diffusers import AutoencoderKL

    n = len(cfg["vae"]["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=cfg["resolution"],
        mid_block_add_attention=False,
        **cfg["vae"],
    )


def build_text_encoder(cfg: dict, tokenizer):
    """A small CLIPTextModelWithProjection matching the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg["max_text_length"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **cfg["text_encoder"],
    )
    return CLIPTextModelWithProjection(config)


def build_transformer(cfg: dict):
    """An SD3Transformer2DModel (MMDiT) sized by the arch config."""
    from diffusers import SD3Transformer2DModel

    t = cfg["transformer"]
    latent = cfg["resolution"] // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    text = cfg["text_encoder"]
    return SD3Transformer2DModel(
        sample_size=latent,
        in_channels=cfg["vae"]["latent_channels"],
        out_channels=cfg["vae"]["latent_channels"],
        joint_attention_dim=2 * text["hidden_size"],
        caption_projection_dim=t["num_attention_heads"] * t["attention_head_dim"],
        pooled_projection_dim=2 * text["projection_dim"],
        pos_embed_max_size=2 * latent // t["patch_size"],
        **t,
    )


def inserted_positions(old: int, new: int) -> list[int]:
    """Where the `new - old` inserted blocks go in a `new`-block stack that keeps `old` trained blocks in order:
    spread evenly, never last (SD3's last block alone is `context_pre_only`, so the old last block stays last)."""
    if not 0 < old <= new:
        raise ValueError(f"cannot deepen {old} blocks to {new}")
    after = sorted({min(old - 2, round((k + 1) * old / (new - old + 1)) - 1) for k in range(new - old)})
    after += [a for a in range(old - 1) if a not in after][: new - old - len(after)]  # rounding collisions
    positions, index = [], 0
    for block in range(old):
        index += 1
        if block in after:
            positions.append(index)
            index += 1
    return positions


def deepen(source, target) -> list[int]:
    """Load a trained SD3Transformer2DModel `source` into the deeper, otherwise identical `target`: every
    non-block weight and every trained block in order, plus identity blocks (adaLN-Zero, as DiT initialises:
    the modulation of the image and text streams is zero, so shift, scale and both gates are 0 and the block
    adds nothing). At initialisation `target` computes exactly what `source` does. Returns the new blocks'
    indices."""
    old, new = len(source.transformer_blocks), len(target.transformer_blocks)
    inserted = inserted_positions(old, new)
    kept = [i for i in range(new) if i not in inserted]
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("transformer_blocks.")}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("transformer_blocks.") for k in missing):
        raise ValueError(
            f"deepen: the models differ beyond depth (missing {missing}, unexpected {unexpected})"
        )
    with torch.no_grad():
        for source_block, index in zip(source.transformer_blocks, kept, strict=True):
            target.transformer_blocks[index].load_state_dict(source_block.state_dict())
        for index in inserted:
            block = target.transformer_blocks[index]
            for norm in (block.norm1, block.norm1_context):
                norm.linear.weight.zero_()
                norm.linear.bias.zero_()
    return inserted


def build_null_t5(joint_attention_dim: int):
    """A T5 tokenizer and a one-layer T5 encoder whose final norm is zero, so it outputs exact zeros.

    The toy model conditions on its two CLIP encoders only. StableDiffusion3Pipeline then appends zero "T5"
    tokens, as it does without text_encoder_3; shipping this null encoder lets a plain
    `StableDiffusion3Pipeline.from_pretrained(folder)` load (diffusers 0.42 requires text_encoder_3).
    """
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=joint_attention_dim,
        d_kv=8,
        d_ff=8,
        num_layers=1,
        num_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    encoder = T5EncoderModel(config)
    with torch.no_grad():
        encoder.encoder.final_layer_norm.weight.zero_()
    return tokenizer, encoder


def encode_text(text_encoders, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP part of StableDiffusion3Pipeline.encode_prompt: penultimate hidden states, pooled projections."""
    ids = clip_ids(tokenizer, prompts)
    outputs = [encoder(ids, output_hidden_states=True) for encoder in text_encoders]
    embeds = torch.cat([o.hidden_states[-2] for o in outputs], -1)
    pooled = torch.cat([o[0] for o in outputs], -1)
    return embeds, pooled


# ----------------------------------------------------------------------------------------------------------
# Autoencoder stages
# ----------------------------------------------------------------------------------------------------------


def stage_logger(log: LossLog, stage: str, args):
    """The per-step callback of an autoencoder stage: a log line and the bar's loss every 10 steps."""

    def on_step(i: int, loss: float, bar) -> None:
        if i % 10 == 0:
            log.write(stage=stage, step=i, loss=round(loss, 5), time=round(time.time() - args.t0, 1))
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    return on_step


def train_vae(vae, args, log: LossLog, seconds: float) -> None:
    """Reconstruction training of the autoencoder: L1 + MSE on renders, KL weight 1e-6."""
    rng = random.Random(args.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    size = SD3_ARCHS[args.arch]["resolution"]
    state = {"step": 0}

    def step(progress: float) -> float:
        x = images_to_tensor([sample_scene(rng, style_prob=0.25) for _ in range(args.vae_batch)], size)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + 1e-6 * posterior.kl().mean()
        for group in opt.param_groups:
            group["lr"] = args.vae_lr * cosine_lr(state["step"], progress, 50)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        return loss.item()

    run_loop(step, args.vae_steps, seconds, "vae", stage_logger(log, "vae", args))
    vae.eval()


def finetune_decoder(vae, args, log: LossLog, seconds: float) -> int:
    """Sharpen the decoder with the encoder frozen: the latent space, and so the denoiser, stay valid."""
    rng = random.Random(args.seed + 4)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    size = SD3_ARCHS[args.arch]["resolution"]
    state = {"step": 0}

    def step(progress: float) -> float:
        x = images_to_tensor([sample_scene(rng, style_prob=0.25) for _ in range(args.vae_batch)], size)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean  # what the denoiser was trained to produce
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        for group in opt.param_groups:
            group["lr"] = args.decoder_lr * cosine_lr(state["step"], progress, 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        return loss.item()

    vae.train()
    steps = run_loop(step, args.decoder_steps, seconds, "decoder", stage_logger(log, "decoder", args))
    vae.eval().requires_grad_(False)
    return steps


def finetune_saved_decoder(args, log: LossLog) -> None:
    """--stage decoder: fine-tune the decoder of the pipeline saved in --out, and save it back atomically."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(args.out)
    steps = finetune_decoder(pipe.vae, args, log, args.minutes * 60 - 20)
    training = json.loads((args.out / "training.json").read_text())
    training["decoder_finetune"] = {
        "command": args.command,
        "steps": steps,
        "elapsed_s": round(time.time() - args.t0, 1),
        "loss_curve": [[r["step"], r["loss"]] for r in log.rows if r.get("stage") == "decoder"],
    }
    training["elapsed_s_all_stages"] = round(
        training["elapsed_s"] + training["decoder_finetune"]["elapsed_s"], 1
    )
    toyworld = json.loads((args.out / "toyworld.json").read_text())
    write_pipeline(pipe, args.out, {"toyworld.json": toyworld, "training.json": training})
    print(f"saved {args.out}: decoder fine-tuned for {steps} steps", flush=True)


def autoencoder(args, log: LossLog, seconds: float):
    """The AutoencoderKL of --vae-from (an earlier run of this script), or a new one trained for `seconds`."""
    if args.vae_from:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(args.vae_from).eval().requires_grad_(False)
    vae = build_vae(SD3_ARCHS[args.arch])
    train_vae(vae, args, log, seconds)
    return vae


def normalised_pool(vae, args, log: LossLog) -> tuple[list, torch.Tensor]:
    """The training pool's scenes and latents, normalised by the shift/scale it sets in the VAE config."""
    resolution = SD3_ARCHS[args.arch]["resolution"]
    scenes, latents, shift, scale = encode_pool(vae, args.seed, args.pool, resolution)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log.write(
        stage="latents", shift=shift, scale=scale, pool=len(scenes), time=round(time.time() - args.t0, 1)
    )
    return scenes, (latents - shift) * scale


# ----------------------------------------------------------------------------------------------------------
# Denoiser
# ----------------------------------------------------------------------------------------------------------


def rectified_flow_loss(transformer, text_encoders, tokenizer, cfg: dict, batch: int):
    """SD3's loss on (x0, prompts, gen): logit-normal t, x_t = (1 - t) x_0 + t eps, MSE to eps - x_0, with a
    per-row mix of 1 and 256 zero "T5" tokens (RepeatedTokenJointAttnProcessor)."""
    counts = torch.tensor(cfg["t5_pad_tokens"], dtype=torch.float32)
    pad = torch.zeros(1, 1, transformer.config.joint_attention_dim)

    def loss_fn(x0: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
        embeds, pooled = encode_text(text_encoders, tokenizer, prompts)
        context = torch.cat([embeds, pad.expand(len(prompts), -1, -1)], 1)
        t = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1), SD3 section 3.1
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        pick = (torch.rand(batch, generator=gen) >= cfg["t5_pad_mix"]).long()
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(counts[pick]))
        pred = transformer(xt, context, pooled, t * 1000).sample
        return F.mse_loss(pred, noise - x0)

    return loss_fn


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def save_pipeline(out: Path, modules, vae, tokenizer, args, log: LossLog, status: str, steps: int) -> None:
    """Write the StableDiffusion3Pipeline + toyworld.json + training.json into `out` atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    cfg = SD3_ARCHS[args.arch]
    tokenizer_3, text_encoder_3 = build_null_t5(modules[0].config.joint_attention_dim)
    transformer = copy.deepcopy(modules[0])
    transformer.set_attn_processor(JointAttnProcessor2_0())
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=vae,
        text_encoder=modules[1],
        tokenizer=tokenizer,
        text_encoder_2=modules[2],
        tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    toyworld = {
        "arch": args.arch,
        "height": cfg["resolution"],
        "width": cfg["resolution"],
        **cfg["sampling"],
        "max_sequence_length": cfg["t5_pad_tokens"][0],
        "max_sequence_length_note": (
            "trained on a mix of 1 and 256 zero T5 tokens: 1 is recommended (about 4x faster); the plain "
            "StableDiffusion3Pipeline default of 256 also works"
        ),
        "held_out_pairs_seed": 0,
        "note": "Trained on toyworld.scenes; evaluate with toyworld.evaluator.evaluate(image, caption).",
    }
    curve = [[r["step"], r["ema_loss"]] for r in log.rows if r.get("stage") == "denoiser"][::5]
    training = {
        "status": status,
        "command": args.command,
        "seed": args.seed,
        "denoiser_steps": steps,
        "batch": args.batch,
        "lr": args.lr,
        "vae_steps": sum(1 for r in log.rows if r.get("stage") == "vae") * 10,
        "vae_from": str(args.vae_from) if args.vae_from else None,
        "decoder_steps": sum(1 for r in log.rows if r.get("stage") == "decoder") * 10,
        "config": cfg,
        "elapsed_s": round(time.time() - args.t0, 1),
        "loss_curve": curve,
        "vae_loss_curve": [[r["step"], r["loss"]] for r in log.rows if r.get("stage") == "vae"],
        "torch": torch.__version__,
    }
    files = {"toyworld.json": toyworld, "training.json": training}
    write_pipeline(pipe, out, files, ("tokenizer", "tokenizer_2"))


def initialise_from(folder: Path, transformer, text_encoders) -> list[int]:
    """Load a trained toy SD3 pipeline's text encoders and (deepened) transformer; returns inserted blocks."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    for encoder, sub in zip(text_encoders, ("text_encoder", "text_encoder_2"), strict=True):
        encoder.load_state_dict(
            CLIPTextModelWithProjection.from_pretrained(folder, subfolder=sub).state_dict()
        )
    return deepen(SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer"), transformer)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of this trainer."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser, SD3_ARCHS)
    parser.add_argument(
        "--stage",
        choices=("all", "decoder"),
        default="all",
        help="all: every stage; decoder: only fine-tune the VAE decoder of the pipeline already in --out",
    )
    parser.add_argument("--vae-steps", type=int, default=0, help="autoencoder steps (0: by --vae-fraction)")
    parser.add_argument("--vae-fraction", type=float, default=0.09, help="share of --minutes for the VAE")
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="skip the VAE stage: load this AutoencoderKL"
    )
    parser.add_argument("--decoder-steps", type=int, default=0, help="decoder fine-tuning steps (0: by time)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4)
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="start the denoiser and text encoders from this toy SD3 pipeline (deepened to --arch's depth)",
    )  # fmt: skip
    parser.add_argument(
        "--decoder-fraction", type=float, default=0.05, help="share of --minutes for the decoder stage"
    )
    parser.set_defaults(minutes=50.0, lr=1e-3, pool=24000, save_every=10.0, threads=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    log = start_run(args, "toyworld.train.sd3", argv, append=args.stage == "decoder")
    if args.stage == "decoder":
        finetune_saved_decoder(args, log)
        return
    cfg, budget = SD3_ARCHS[args.arch], args.minutes * 60
    tokenizer = build_clip_tokenizer(cfg["max_text_length"])
    vae = autoencoder(args, log, args.vae_fraction * budget)
    scenes, latents = normalised_pool(vae, args, log)
    transformer = build_transformer(cfg)
    text_encoders = [build_text_encoder(cfg, tokenizer) for _ in range(2)]
    if args.init_from:
        inserted = initialise_from(args.init_from, transformer, text_encoders)
        log.write(stage="init", source=str(args.init_from), inserted_blocks=inserted)
    remaining = budget * (1 - args.decoder_fraction) - (time.time() - args.t0) - 30  # 30 s: the final save

    def save_fn(modules, status: str, steps: int) -> None:
        save_pipeline(args.out, modules, vae, tokenizer, args, log, status, steps)

    modules = torch.nn.ModuleList([transformer, *text_encoders])
    loss_fn = rectified_flow_loss(transformer, text_encoders, tokenizer, cfg, args.batch)
    ema, steps = train_denoiser(modules, loss_fn, scenes, latents, args, log, remaining, save_fn)
    if args.decoder_steps or args.decoder_fraction > 0:  # --decoder-fraction 0: no decoder stage at all
        finetune_decoder(vae, args, log, budget - (time.time() - args.t0) - 20)
    save_fn(ema, status="complete", steps=steps)
    print_saved(args, steps)


if __name__ == "__main__":
    main()
