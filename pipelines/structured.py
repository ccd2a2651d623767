"""Structured cross-attention for UNet pipelines (SD1.x/2.x, SDXL): the `structured` call arguments.

`StructuredMixin.__call__` encodes the prompts and their noun phrases itself, packs the contexts the processors
need (see `guidance.structured`), passes them to the parent pipeline as `prompt_embeds` /
`negative_prompt_embeds`, and swaps `StructuredCrossAttnProcessor` onto the cross-attention layers for the call.
It sits before `SoftPAGMixin` in the class order, so one call may use both (self-attention perturbed,
cross-attention structured).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from guidance.noun_phrases import Phrase, noun_phrases_batch, token_spans
from guidance.perturbation import SoftPAGError
from guidance.structured import (
    MODES,
    JointStructuredState,
    StructuredCrossAttnProcessor,
    StructuredJointAttnProcessor,
    StructuredState,
    aligned_contexts,
    pack,
)

CROSS_REPLACEABLE = ("AttnProcessor2_0", "AttnProcessor", "StructuredCrossAttnProcessor")


class StructuredMixin:
    """Adds `structured`, `noun_phrases`, `structured_layers`, `structured_start/stop` to a UNet pipeline."""

    _structured_modes = MODES

    def _encode(self, prompts: list[str], cfg: bool, negative=None, options: dict | None = None):
        """(prompt_embeds, negative_prompt_embeds, extra) as the parent pipeline computes them.

        `options`: the call's encoder arguments (`clip_skip`, SD3's `max_sequence_length`), passed on where the
        pipeline's encode_prompt takes them, so phrases are encoded exactly as the prompt is."""
        accepted = inspect.signature(self.encode_prompt).parameters
        more = {"prompt_2": None, "prompt_3": None} if "prompt_3" in accepted else {}
        more.update({k: v for k, v in (options or {}).items() if k in accepted})
        out = self.encode_prompt(
            prompt=prompts, device=self._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative, **more,
        )  # fmt: skip
        if len(out) == 4:  # SDXL and SD3: pooled embeddings stay the full prompt's
            return out[0], out[1], {"pooled_prompt_embeds": out[2], "negative_pooled_prompt_embeds": out[3]}
        return out[0], out[1], {}

    def phrase_segments(self, prompt: str, phrases: list[Phrase]) -> list[list]:
        """Where each phrase's tokens sit in the prompt encoding: [(start, end, source start)] (CLIP, BOS first);
        an empty list for a phrase wholly in the truncated part."""
        return [
            [] if span is None else [(span[0], span[1], 1)]
            for span in token_spans(self.tokenizer, prompt, phrases)
        ]

    def aligned_stacks(
        self, prompts: list[str], phrases: list[list[Phrase]], full: torch.Tensor, options: dict | None = None
    ):
        """Per prompt: the stack [W_p, W̄_1..W̄_k] of aligned contexts (phrases beyond truncation dropped). The
        phrases of every prompt are encoded in one call."""
        located = []
        for prompt, found in zip(prompts, phrases, strict=True):
            segments = self.phrase_segments(prompt, found)
            located.append([(p, seg) for p, seg in zip(found, segments, strict=True) if seg])
        texts = [p.text for row in located for p, _ in row]
        encoded = self._encode(texts, False, options=options)[0] if texts else None
        stacks, i = [], 0
        for b, row in enumerate(located):
            if row:
                stacks.append(
                    aligned_contexts(full[b], [(encoded[i + j], seg) for j, (_, seg) in enumerate(row)])
                )
                i += len(row)
            else:
                stacks.append(full[b][None])
        return stacks

    def _check_layers(self, layers: Sequence[int] | None, count: int) -> None:
        if layers is not None:
            bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
            if bad:
                raise SoftPAGError(f"structured_layers={list(layers)!r}: layers must be in 0..{count - 1}")

    def _window_hook(self, module: torch.nn.Module, state, start: float, stop: float):
        """A pre-hook on the denoiser setting `state.active` inside [start, stop) of the schedule."""
        calls = {"n": 0}

        def count(module, args, kwargs):
            fraction = calls["n"] / max(len(self.scheduler.timesteps), 1)
            calls["n"] += 1
            state.active = start <= fraction < stop

        return module.register_forward_pre_hook(count, with_kwargs=True)

    @contextmanager
    def _structured_installed(self, mode: str, length: int, sets: int, layers, start: float, stop: float):
        """UNets: StructuredCrossAttnProcessor on every attn2 (those outside `layers` use W_p only)."""
        state = StructuredState(mode, length, sets)
        unet = self.unet
        names = [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith("attn2.processor")]
        self._check_layers(layers, len(names))
        originals = {n: unet.get_submodule(n).processor for n in names}
        for name, processor in originals.items():
            if type(processor).__name__ not in CROSS_REPLACEABLE:
                raise SoftPAGError(
                    f"structured: {name} uses {type(processor).__name__}; structured cross-attention replaces only "
                    f"{', '.join(CROSS_REPLACEABLE)} (IP-Adapter and xformers are not supported with it)"
                )
        handle = self._window_hook(unet, state, start, stop)
        try:
            for i, name in enumerate(names):
                on = layers is None or i in layers
                unet.get_submodule(name).set_processor(StructuredCrossAttnProcessor(state, on))
            yield
        finally:
            handle.remove()
            for name, processor in originals.items():
                unet.get_submodule(name).set_processor(processor)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args,
        structured: str | None = None,
        noun_phrases: Sequence[str] | Sequence[Sequence[str]] | None = None,
        structured_layers: Sequence[int] | None = None,
        structured_start: float = 0.0,
        structured_stop: float = 1.0,
        **kwargs,
    ):
        """Parent arguments plus structured cross-attention.

        structured: "key-value" (the paper's default), "conjunction", or None (off).
        noun_phrases: phrases to use instead of the parser; a list for one prompt, or one list per prompt.
        structured_layers: indices of cross-attention layers (order of `unet.attn_processors`); None = all.
        structured_start, structured_stop: fraction of the schedule in which it applies (default: every step).
        """
        if structured is None:
            if noun_phrases is not None or structured_layers is not None:
                raise SoftPAGError(
                    "noun_phrases / structured_layers need structured='key-value' or 'conjunction'"
                )
            return super().__call__(prompt, *args, **kwargs)
        if structured not in self._structured_modes:
            raise SoftPAGError(
                f"structured={structured!r} is not supported here; allowed: {self._structured_modes} or None"
            )
        if prompt is None or kwargs.get("prompt_embeds") is not None:
            raise SoftPAGError(
                "structured needs `prompt` as text (not prompt_embeds): phrases are encoded from it"
            )
        if args:
            raise SoftPAGError("pass the other arguments by name when structured is on")
        if not 0 <= structured_start < structured_stop <= 1:
            raise SoftPAGError(f"structured_start={structured_start} / structured_stop={structured_stop}: need "
                               "0 <= start < stop <= 1")  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        phrases = _phrases_for(prompts, noun_phrases)
        options = {k: kwargs[k] for k in ("clip_skip", "max_sequence_length") if k in kwargs}
        # One encode call gives the full prompts and the negatives exactly as the parent pipeline would.
        negative = kwargs.pop("negative_prompt", None)
        negative = [negative] * len(prompts) if isinstance(negative, str) else negative
        full, neg, extra = self._encode(prompts, True, negative, options)
        stacks = self.aligned_stacks(prompts, phrases, full, options)
        sets = max(len(s) for s in stacks) if structured == "conjunction" else 1
        packed = torch.stack([pack(s, structured, sets) for s in stacks])
        neg_packed = torch.stack([pack(n[None], structured, sets) for n in neg])
        with self._structured_installed(
            structured, full.shape[1], sets, structured_layers, structured_start, structured_stop
        ):
            return super().__call__(
                None, prompt_embeds=packed, negative_prompt_embeds=neg_packed, **extra, **kwargs
            )


class StructuredSD3Mixin(StructuredMixin):
    """The MMDiT (SD3) port, key-value mode only: see `guidance.structured.StructuredJointAttnProcessor`.
    `structured_layers` are transformer block indices (default: all). Does not combine with `pag_*` yet."""

    _structured_modes = ("key-value",)

    def phrase_segments(self, prompt: str, phrases: list[Phrase]) -> list[list]:
        """CLIP positions (BOS first) and, with T5, its positions after the CLIP tokens (no BOS)."""
        per_phrase = super().phrase_segments(prompt, phrases)
        if self.tokenizer_3 is not None:
            offset = self.tokenizer_max_length
            spans = token_spans(self.tokenizer_3, prompt, phrases, self._structured_t5_length)
            for segments, span in zip(per_phrase, spans, strict=True):
                if segments and span is not None:
                    segments.append((offset + span[0], offset + span[1], offset))
        return per_phrase

    def __call__(self, prompt=None, *args, **kwargs):
        if kwargs.get("structured") is not None and (
            kwargs.get("pag_heads") or kwargs.get("pag_heads_per_image")
        ):
            raise SoftPAGError("structured on SD3 does not combine with pag_heads yet; use one of them")
        self._structured_t5_length = kwargs.get("max_sequence_length", 256)
        return super().__call__(prompt, *args, **kwargs)

    @contextmanager
    def _structured_installed(self, mode: str, length: int, sets: int, layers, start: float, stop: float):
        transformer = self.transformer
        blocks = transformer.transformer_blocks
        self._check_layers(layers, len(blocks))
        chosen = range(len(blocks)) if layers is None else sorted(set(layers))
        names = {i: f"transformer_blocks.{i}.attn" for i in chosen}
        originals = {n: transformer.get_submodule(n).processor for n in names.values()}
        for name, processor in originals.items():
            if type(processor).__name__ not in ("JointAttnProcessor2_0", "StructuredJointAttnProcessor"):
                raise SoftPAGError(
                    f"structured: {name} uses {type(processor).__name__}, which it would replace"
                )
        state = JointStructuredState(value_context={})
        signature = inspect.signature(transformer.forward)

        def split(module, args, kwargs):
            bound = signature.bind(*args, **kwargs)
            packed = bound.arguments["encoder_hidden_states"]
            full, mean = packed[:, :length], packed[:, length:]
            bound.arguments["encoder_hidden_states"] = full
            state.delta = module.context_embedder(mean) - module.context_embedder(full)
            return bound.args, bound.kwargs

        def value_context(name):
            def hook(block, args, kwargs):
                shifted = kwargs["encoder_hidden_states"] + state.delta
                if block.context_pre_only:
                    state.value_context[name] = block.norm1_context(shifted, kwargs["temb"])
                else:
                    state.value_context[name] = block.norm1_context(shifted, emb=kwargs["temb"])[0]

            return hook

        handles = [transformer.register_forward_pre_hook(split, with_kwargs=True, prepend=True),
                   self._window_hook(transformer, state, start, stop)]  # fmt: skip
        handles += [
            blocks[i].register_forward_pre_hook(value_context(name), with_kwargs=True)
            for i, name in names.items()
        ]
        try:
            for name in names.values():
                transformer.get_submodule(name).set_processor(StructuredJointAttnProcessor(state, name))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name, processor in originals.items():
                transformer.get_submodule(name).set_processor(processor)


def _phrases_for(prompts: list[str], given) -> list[list[Phrase]]:
    """Parsed phrases per prompt, or the user's (located in the prompt; an error names a phrase not found)."""
    if given is None:
        return noun_phrases_batch(prompts)
    per_prompt = [given] if given and isinstance(given[0], str) else list(given)
    if len(per_prompt) != len(prompts):
        raise SoftPAGError(f"noun_phrases has {len(per_prompt)} lists for {len(prompts)} prompts")
    result = []
    for prompt, texts in zip(prompts, per_prompt, strict=True):
        found = []
        for text in texts:
            start = prompt.find(text)
            if start < 0:
                raise SoftPAGError(f"noun_phrases: {text!r} does not occur in the prompt {prompt!r}")
            found.append(Phrase(text, start, start + len(text)))
        result.append(found)
    return result
