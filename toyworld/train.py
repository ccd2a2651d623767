"""Train a complete small diffusers pipeline on the toy world, on CPU.

    python -m toyworld.train --arch sd3 --out assets/toy-sd3 --seed 0 --minutes 50

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
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from toyworld.scenes import caption, render, sample_scene, vocabulary

# ----------------------------------------------------------------------------------------------------------
# Named configurations (one table; an architecture flag selects a row)
# ----------------------------------------------------------------------------------------------------------

ARCHS: dict[str, dict] = {
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

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: CLIP BPE learned on the toy-world vocabulary
# ----------------------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges (BPE training on `words`) until every word is a single `word</w>` token."""
    chars = list(bytes_to_unicode().values())
    vocab = [BOS, EOS] + chars + [c + "</w>" for c in chars]
    segments = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segments.values()):
        counts: dict[tuple[str, str], int] = {}
        for seg in segments.values():
            for pair in zip(seg, seg[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        for word, seg in segments.items():
            merged, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    merged.append(seg[i] + seg[i + 1])
                    i += 2
                else:
                    merged.append(seg[i])
                    i += 1
            segments[word] = merged
    return {token: i for i, token in enumerate(dict.fromkeys(vocab))}, merges


def build_tokenizer(max_length: int):
    """A CLIPTokenizer (real vocab.json/merges.txt files) in which each toy-world word is one token."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(vocabulary())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in vocabulary():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {word!r} into {ids}")
    return tokenizer


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


def build_null_t5(joint_attention_dim: int):
    """A T5 tokenizer and a one-layer T5 encoder whose final norm is zero, so it outputs exact zeros.

    The toy model conditions on its two CLIP encoders only. StableDiffusion3Pipeline then appends zero "T5"
    tokens, as it does without text_encoder_3; shipping this null encoder lets a plain
    `StableDiffusion3Pipeline.from_pretrained(folder)` load (diffusers 0.42 requires text_encoder_3).
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in vocabulary()]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
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


def write_bpe_files(tokenizer, folder: Path) -> None:
    """Also write the classic vocab.json and merges.txt beside tokenizer.json."""
    vocab, merges = learn_bpe(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


# ----------------------------------------------------------------------------------------------------------
# Exact shortcut for the all-zero "T5" tokens
# ----------------------------------------------------------------------------------------------------------


class RepeatedTokenJointAttnProcessor:
    """JointAttnProcessor2_0 where the last context token stands for `count` identical copies.

    StableDiffusion3Pipeline appends `max_sequence_length` zero "T5" tokens (here from a null encoder). They stay
    identical through every block, so attending to n copies equals attending to one copy whose logit gets
    + log(n). `count` is an int, or one count per batch row (a tensor), so training can mix lengths.
    """

    def __init__(self, count: int | torch.Tensor):
        self.log_count = torch.log(torch.as_tensor(count, dtype=torch.float32))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        """Joint attention over [image, text] with the repeated token's multiplicity as a logit bias."""
        b, n_image = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(hidden_states)),
            heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        log_count = self.log_count.to(q.dtype).reshape(-1).expand(b)
        bias = torch.zeros(b, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[:, 0, 0, -1] = log_count
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1]).to(q.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


def clip_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids as diffusers' pipelines make them for CLIP: padded to model_max_length, truncated."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_text(text_encoders, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP part of StableDiffusion3Pipeline.encode_prompt: penultimate hidden states and pooled projections."""
    ids = clip_ids(tokenizer, prompts)
    outputs = [encoder(ids, output_hidden_states=True) for encoder in text_encoders]
    embeds = torch.cat([o.hidden_states[-2] for o in outputs], -1)
    pooled = torch.cat([o[0] for o in outputs], -1)
    return embeds, pooled


# ----------------------------------------------------------------------------------------------------------
# Training stages
# ----------------------------------------------------------------------------------------------------------


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


def images_to_tensor(scenes, size: int) -> torch.Tensor:
    """Renders of `scenes` as a float tensor in [-1, 1], N x 3 x size x size."""
    arrays = np.stack([np.asarray(render(s, size)) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 10% as `progress` goes from 0 to 1."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def run_loop(step_fn, steps: int, seconds: float, desc: str, on_step) -> int:
    """Call `step_fn(progress)` until `steps` steps (if > 0) or `seconds` have passed; returns the step count.

    With a time budget, progress (for the learning-rate schedule) is the elapsed fraction of `seconds`, so
    the schedule completes however fast the shared CPU happens to be; `--steps N` reproduces a run exactly.
    """
    start, step = time.time(), 0
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


def train_vae(vae, args, log: LossLog, seconds: float) -> None:
    """Reconstruction training of the autoencoder: L1 + MSE on renders, KL weight 1e-6."""
    rng = random.Random(args.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    size = ARCHS[args.arch]["resolution"]

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

    def on_step(i: int, loss: float, bar) -> None:
        if i % 10 == 0:
            log.write(stage="vae", step=i, loss=round(loss, 5), time=round(time.time() - args.t0, 1))
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    state = {"step": 0}
    run_loop(step, args.vae_steps, seconds, "vae", on_step)
    vae.eval()


def finetune_decoder(vae, args, log: LossLog, seconds: float) -> int:
    """Sharpen the decoder with the encoder frozen: the latent space, and so the denoiser, stay valid."""
    rng = random.Random(args.seed + 4)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    size = ARCHS[args.arch]["resolution"]
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

    def on_step(i: int, loss: float, bar) -> None:
        if i % 10 == 0:
            log.write(stage="decoder", step=i, loss=round(loss, 5), time=round(time.time() - args.t0, 1))
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    vae.train()
    steps = run_loop(step, args.decoder_steps, seconds, "decoder", on_step)
    vae.eval().requires_grad_(False)
    return steps


def finetune_saved_decoder(args, log: LossLog) -> None:
    """--stage decoder: fine-tune the decoder of the pipeline saved in --out, and save it back atomically."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(args.out)
    steps = finetune_decoder(pipe.vae, args, log, args.minutes * 60 - 20)
    training = json.loads((args.out / "training.json").read_text())
    training["decoder_finetune"] = {
        "command": "python -m toyworld.train " + " ".join(sys.argv[1:]),
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


@torch.no_grad()
def encode_pool(vae, args) -> tuple[list, torch.Tensor, float, float]:
    """Scenes of the training pool with their latent means, and the shift/scale that normalise them."""
    rng = random.Random(args.seed + 2)
    scenes = [sample_scene(rng) for _ in range(args.pool)]
    size = ARCHS[args.arch]["resolution"]
    latents = []
    for i in tqdm(range(0, len(scenes), 256), desc="encode", mininterval=5, file=sys.stdout):
        latents.append(vae.encode(images_to_tensor(scenes[i : i + 256], size)).latent_dist.mean)
    latents = torch.cat(latents)
    shift, std = latents.mean().item(), latents.std().item()
    return scenes, latents, shift, 1.0 / std


def denoiser_setup(modules, args) -> tuple:
    """EMA copy, AdamW and the loop state shared by every denoiser trainer."""
    ema = copy.deepcopy(modules).requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    return ema, opt, {"step": 0, "running": None, "last_save": time.time()}


def training_batch(scenes, latents, args, rng: random.Random, gen: torch.Generator) -> tuple:
    """A random batch of pool latents and their captions ("" with probability caption_dropout)."""
    idx = torch.randint(len(scenes), (args.batch,), generator=gen)
    prompts = ["" if rng.random() < args.caption_dropout else caption(scenes[i], rng) for i in idx.tolist()]
    return latents[idx], prompts


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
    transformer, text_encoders, tokenizer, scenes, latents, args, log: LossLog, seconds: float, save_fn
) -> dict:
    """Rectified-flow training of the MMDiT and both text encoders; returns the EMA weights' modules."""
    cfg = ARCHS[args.arch]
    rng = random.Random(args.seed + 3)
    gen = torch.Generator().manual_seed(args.seed + 3)
    modules = torch.nn.ModuleList([transformer, *text_encoders])
    ema, opt, state = denoiser_setup(modules, args)
    counts = torch.tensor(cfg["t5_pad_tokens"], dtype=torch.float32)
    pad = torch.zeros(1, 1, transformer.config.joint_attention_dim)

    def step(progress: float) -> float:
        x0, prompts = training_batch(scenes, latents, args, rng, gen)
        embeds, pooled = encode_text(text_encoders, tokenizer, prompts)
        context = torch.cat([embeds, pad.expand(len(prompts), -1, -1)], 1)
        t = torch.sigmoid(torch.randn(args.batch, generator=gen))  # logit-normal(0, 1), SD3 section 3.1
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        pick = (torch.rand(args.batch, generator=gen) >= cfg["t5_pad_mix"]).long()
        transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(counts[pick]))
        pred = transformer(xt, context, pooled, t * 1000).sample
        loss = F.mse_loss(pred, noise - x0)
        return optimizer_step(loss, opt, modules, ema, state, args, progress)

    total = run_loop(
        step, args.steps, seconds, "denoiser", denoiser_logger(state, log, opt, ema, args, save_fn)
    )
    return ema, total


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def save_pipeline(out: Path, modules, vae, tokenizer, args, log: LossLog, status: str, steps: int) -> None:
    """Write the StableDiffusion3Pipeline + toyworld.json + training.json into `out` atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    cfg = ARCHS[args.arch]
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
        "command": "python -m toyworld.train " + " ".join(sys.argv[1:]),
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
    write_pipeline(pipe, out, {"toyworld.json": toyworld, "training.json": training}, tokenizer)


def write_pipeline(
    pipe, out: Path, files: dict[str, dict], tokenizer=None, bpe_folders=("tokenizer", "tokenizer_2")
) -> None:
    """save_pretrained into a temp folder, add JSON `files`, vocab.json/merges.txt of the CLIP `tokenizer` in
    `bpe_folders` (and files of an older `out` that are missing), then swap it into place by renaming."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        for name in bpe_folders:
            write_bpe_files(tokenizer, tmp / name)
    for name, data in files.items():
        (tmp / name).write_text(json.dumps(data, indent=1) + "\n")
    if out.exists():
        for path in out.rglob("*"):
            target = tmp / path.relative_to(out)
            if path.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="sd3")
    parser.add_argument(
        "--stage",
        choices=("all", "decoder"),
        default="all",
        help="all: every stage; decoder: only fine-tune the VAE decoder of the pipeline already in --out",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=50.0, help="wall-clock budget for all stages")
    parser.add_argument("--steps", type=int, default=0, help="denoiser steps (0: fit the time budget)")
    parser.add_argument("--vae-steps", type=int, default=0, help="autoencoder steps (0: by --vae-fraction)")
    parser.add_argument("--vae-fraction", type=float, default=0.09, help="share of --minutes for the VAE")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="skip the VAE stage: load this AutoencoderKL"
    )
    parser.add_argument("--decoder-steps", type=int, default=0, help="decoder fine-tuning steps (0: by time)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4)
    parser.add_argument(
        "--decoder-fraction", type=float, default=0.05, help="share of --minutes for the decoder stage"
    )
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--pool", type=int, default=24000, help="training scenes whose latents are cached")
    parser.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints")
    parser.add_argument("--log", type=Path, default=None, help="loss log (JSON lines); default next to --out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.t0 = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = ARCHS[args.arch]
    log = LossLog(args.log or args.out.parent / f"{args.out.name}-loss.jsonl", append=args.stage == "decoder")
    if args.stage == "decoder":
        finetune_saved_decoder(args, log)
        return
    budget = args.minutes * 60

    tokenizer = build_tokenizer(cfg["max_text_length"])
    if args.vae_from:  # an autoencoder trained by an earlier run of this script (its time counts too)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from).eval().requires_grad_(False)
    else:
        vae = build_vae(cfg)
        train_vae(vae, args, log, args.vae_fraction * budget)
    scenes, latents, shift, scale = encode_pool(vae, args)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (latents - shift) * scale
    log.write(
        stage="latents", shift=shift, scale=scale, pool=len(scenes), time=round(time.time() - args.t0, 1)
    )

    transformer = build_transformer(cfg)
    text_encoders = [build_text_encoder(cfg, tokenizer) for _ in range(2)]
    remaining = budget * (1 - args.decoder_fraction) - (time.time() - args.t0) - 30  # 30 s: the final save

    def save_fn(modules, status: str, steps: int) -> None:
        save_pipeline(args.out, modules, vae, tokenizer, args, log, status, steps)

    ema, steps = train_denoiser(
        transformer, text_encoders, tokenizer, scenes, latents, args, log, remaining, save_fn
    )
    finetune_decoder(vae, args, log, budget - (time.time() - args.t0) - 20)
    save_fn(ema, status="complete", steps=steps)
    print(
        f"saved {args.out} after {(time.time() - args.t0) / 60:.1f} min, {steps} denoiser steps", flush=True
    )


if __name__ == "__main__":
    main()
