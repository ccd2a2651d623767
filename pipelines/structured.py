"""Structured cross-attention for UNet pipelines (SD1.x/2.x, SDXL): the `structured` call arguments.

`StructuredMixin.__call__` encodes the prompts and their noun phrases itself, packs the contexts the processors
need (see `guidance.structured`), passes them to the parent pipeline as `prompt_embeds` /
`negative_prompt_embeds`, and swaps `StructuredCrossAttnProcessor` onto the cross-attention layers for the call.
It sits after `SoftPAGMixin` in the class order (SoftPAG's `__call__` takes the `pag_*` arguments and the folder's
recommended call first), so one call may use both (self-attention perturbed, cross-attention structured).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guidance.config import (
    STRUCTURED_MODES,
    STRUCTURED_SETTINGS,
    StructuredConfig,
    StructuredError,
)
from guidance.heads import short_repr
from guidance.noun_phrases import Phrase, noun_phrases_batch, token_spans
from guidance.scope import CallScope, ScopeHook, StepWindow
from guidance.structured import (
    JointStructuredState,
    StructuredCall,
    StructuredCrossAttnProcessor,
    StructuredJointAttnProcessor,
    StructuredState,
    aligned_contexts,
    pack,
    single_aligned,
)
from guidance.swap import attention_modules, denoiser_of

CROSS_REPLACEABLE = ("AttnProcessor2_0", "AttnProcessor", "StructuredCrossAttnProcessor")
JOINT_REPLACEABLE = ("JointAttnProcessor2_0", "StructuredJointAttnProcessor")


@dataclass(frozen=True)
class EncodeOptions:
    """One call's text-encoder options (`clip_skip`, SD3's `max_sequence_length`), passed where accepted."""

    values: dict

    @classmethod
    def of_call(cls, kwargs: dict) -> EncodeOptions:
        """The encoder options of a call: `clip_skip`, `max_sequence_length`, and the LoRA scale of
        `cross_attention_kwargs` / `joint_attention_kwargs` (passed to encode_prompt as the parent does)."""
        values = {k: kwargs[k] for k in ("clip_skip", "max_sequence_length") if k in kwargs}
        attention = kwargs.get("cross_attention_kwargs") or kwargs.get("joint_attention_kwargs") or {}
        if attention.get("scale") is not None:
            values["lora_scale"] = attention["scale"]
        return cls(values)

    @property
    def t5_length(self) -> int:
        """The T5 length of the call (SD3's default 256)."""
        return self.values.get("max_sequence_length", 256)


class StructuredMixin:
    """Adds `structured`, `noun_phrases`, `structured_layers`, `structured_start/stop` to a UNet pipeline."""

    _structured_modes = STRUCTURED_MODES

    def _encode(self, prompts: list[str], cfg: bool, negative=None, options: EncodeOptions | None = None):
        """(prompt_embeds, negative_prompt_embeds, extra) as the parent pipeline computes them.

        `options`: the call's encoder arguments, passed on where the pipeline's encode_prompt takes them, so
        phrases are encoded exactly as the prompt is."""
        accepted = inspect.signature(self.encode_prompt).parameters
        more = {"prompt_2": None, "prompt_3": None} if "prompt_3" in accepted else {}
        more.update({k: v for k, v in (options.values if options else {}).items() if k in accepted})
        out = self.encode_prompt(
            prompt=prompts, device=self._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative, **more,
        )  # fmt: skip
        if len(out) == 4:  # SDXL and SD3: pooled embeddings stay the full prompt's
            return out[0], out[1], {"pooled_prompt_embeds": out[2], "negative_pooled_prompt_embeds": out[3]}
        return out[0], out[1], {}

    def phrase_segments(self, prompt: str, phrases: list[Phrase], options: EncodeOptions) -> list[list]:
        """Where each phrase's tokens sit in the prompt encoding: [(start, end, source start)] (CLIP, BOS first);
        an empty list for a phrase wholly in the truncated part."""
        return [
            [] if span is None else [(span[0], span[1], 1)]
            for span in token_spans(self.tokenizer, prompt, phrases)
        ]

    def aligned_stacks(
        self,
        prompts: list[str],
        phrases: list[list[Phrase]],
        full: torch.Tensor,
        options: EncodeOptions,
        mode: str = "key-value",
    ):
        """Per prompt: the stack [W_p, W̄_1..W̄_k] of aligned contexts (phrases beyond truncation dropped); in
        the official conjunction mode W_p is replaced by S, W_p with every phrase aligned at once. The phrases of
        every prompt are encoded in one call."""
        located = []
        for prompt, found in zip(prompts, phrases, strict=True):
            segments = self.phrase_segments(prompt, found, options)
            located.append([(p, seg) for p, seg in zip(found, segments, strict=True) if seg])
        texts = [p.text for row in located for p, _ in row]
        encoded = self._encode(texts, False, options=options)[0] if texts else None
        stacks, i = [], 0
        for b, row in enumerate(located):
            if row:
                encodings = [(encoded[i + j], seg) for j, (_, seg) in enumerate(row)]
                stack = aligned_contexts(full[b], encodings)
                if mode == "conjunction":
                    stack[0] = single_aligned(full[b], encodings)
                stacks.append(stack)
                i += len(row)
            else:
                _warn_unstructured(prompt)
                stacks.append(full[b][None])
        return stacks

    def _structured_scope(self, state: StructuredCall, config: StructuredConfig) -> CallScope:
        """The call's scope: its state, with the step window counted by a denoiser pre-hook (processors and other
        hooks are added by `_structured_installed`)."""
        state.window = StepWindow(self.scheduler, config.start, config.stop)
        return CallScope(state, "structured", StructuredError).hook(
            denoiser_of(self), "structured-window", _Window()
        )

    def _structured_installed(self, config: StructuredConfig, length: int, sets: int, options: EncodeOptions):
        """UNets: StructuredCrossAttnProcessor on every attn2 (those outside `layers` use W_p only)."""
        names = attention_modules(self.unet, "attn2")
        config.check_layers(len(names))
        processors = {
            name: StructuredCrossAttnProcessor(config.layers is None or i in config.layers)
            for i, name in enumerate(names)
        }
        scope = self._structured_scope(StructuredState(config.mode, length, sets), config)
        return scope.processors(self.unet, processors, CROSS_REPLACEABLE)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args,
        structured: str | None = STRUCTURED_SETTINGS["structured"].default,
        noun_phrases: Sequence[str] | Sequence[Sequence[str]] | None = None,
        structured_layers: Sequence[int] | None = None,
        structured_start: float = STRUCTURED_SETTINGS["structured_start"].default,
        structured_stop: float = STRUCTURED_SETTINGS["structured_stop"].default,
        **kwargs,
    ):
        """Parent arguments plus structured cross-attention.

        structured: "key-value" (the paper's default), "conjunction", or None (off).
        noun_phrases: phrases to use instead of the parser; a list for one prompt, or one list per prompt.
        structured_layers: indices of cross-attention layers (order of `unet.attn_processors`); None = all.
        structured_start, structured_stop: fraction of the schedule in which it applies (default: every step).
        """
        config = StructuredConfig(
            structured,
            noun_phrases,
            structured_layers,
            structured_start,
            structured_stop,
            self._structured_modes,
        )
        if config.mode is None:
            return super().__call__(prompt, *args, **kwargs)
        if prompt is None or kwargs.get("prompt_embeds") is not None:
            raise StructuredError(
                "structured needs `prompt` as text (not prompt_embeds): phrases are encoded from it"
            )
        if args:
            raise StructuredError("pass the other arguments by name when structured is on")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        phrases = _phrases_for(prompts, config.noun_phrases)
        options = EncodeOptions.of_call(kwargs)
        # One encode call gives the full prompts and the negatives exactly as the parent pipeline would.
        negative = kwargs.pop("negative_prompt", None)
        negative = [negative] * len(prompts) if isinstance(negative, str) else negative
        full, neg, extra = self._encode(prompts, True, negative, options)
        stacks = self.aligned_stacks(prompts, phrases, full, options, config.mode)
        sets = max(len(s) for s in stacks) if config.mode == "conjunction" else 1
        packed = torch.stack([pack(s, config.mode, sets) for s in stacks])
        neg_packed = torch.stack([pack(n[None], config.mode, sets) for n in neg])
        if kwargs.get("callback_on_step_end") is not None:
            kwargs["callback_on_step_end"] = _unpacked_callback(kwargs["callback_on_step_end"], full.shape[1])
        with self._structured_installed(config, full.shape[1], sets, options):
            return super().__call__(
                None, prompt_embeds=packed, negative_prompt_embeds=neg_packed, **extra, **kwargs
            )


class StructuredSD3Mixin(StructuredMixin):
    """The MMDiT (SD3) port, key-value mode only: see `guidance.structured.StructuredJointAttnProcessor`.
    `structured_layers` are transformer block indices (default: all). Does not combine with `pag_*` yet (the SD3
    pipeline refuses both at once)."""

    _structured_modes = ("key-value",)

    def phrase_segments(self, prompt: str, phrases: list[Phrase], options: EncodeOptions) -> list[list]:
        """CLIP positions (BOS first) and, with T5, its positions after the CLIP tokens (no BOS)."""
        per_phrase = super().phrase_segments(prompt, phrases, options)
        if self.tokenizer_3 is not None:
            offset = self.tokenizer_max_length
            spans = token_spans(self.tokenizer_3, prompt, phrases, options.t5_length)
            for segments, span in zip(per_phrase, spans, strict=True):
                if segments and span is not None:
                    segments.append((offset + span[0], offset + span[1], offset))
        return per_phrase

    def _structured_installed(self, config: StructuredConfig, length: int, sets: int, options: EncodeOptions):
        """SD3: StructuredJointAttnProcessor on the chosen blocks, the packed context split at the input, and
        each chosen block's value context computed by a block pre-hook."""
        transformer = self.transformer
        blocks = transformer.transformer_blocks
        config.check_layers(len(blocks))
        chosen = range(len(blocks)) if config.layers is None else sorted(set(config.layers))
        names = {i: f"transformer_blocks.{i}.attn" for i in chosen}
        processors = {name: StructuredJointAttnProcessor(name) for name in names.values()}
        state = JointStructuredState(value_context={}, length=length, chosen=frozenset(names.values()))
        scope = self._structured_scope(state, config).processors(transformer, processors, JOINT_REPLACEABLE)
        scope.hook(
            transformer, "structured-sd3", _SplitContext(inspect.signature(transformer.forward)), prepend=True
        )
        for i in chosen:
            scope.hook(blocks[i], "structured-sd3-values", _ValueContext(f"transformer_blocks.{i}.attn"))
        return scope


class _Window(ScopeHook):
    """The denoiser's pre-hook: is the running structured call's step inside its window (`state.active`)."""

    serves = StructuredCall

    def pre_forward(self, state: StructuredCall, module, args, kwargs):
        state.active = state.window.advance()


class _SplitContext(ScopeHook):
    """SD3 port: split the packed `[W_p ; mean]` text input into the stream and the input-level offset d."""

    serves = JointStructuredState

    def __init__(self, signature: inspect.Signature):
        self.signature = signature

    def pre_forward(self, state: JointStructuredState, module, args, kwargs):
        bound = self.signature.bind(*args, **kwargs)
        packed = bound.arguments["encoder_hidden_states"]
        full, mean = packed[:, : state.length], packed[:, state.length :]
        bound.arguments["encoder_hidden_states"] = full
        state.delta = module.context_embedder(mean) - module.context_embedder(full)
        return bound.args, bound.kwargs


class _ValueContext(ScopeHook):
    """SD3 port: a structured block's value context norm(c_l + d), before the block runs."""

    serves = JointStructuredState

    def __init__(self, name: str):
        self.name = name  # the block's attention module

    def pre_forward(self, state: JointStructuredState, block, args, kwargs):
        if self.name not in state.chosen:
            return
        shifted = kwargs["encoder_hidden_states"] + state.delta
        if block.context_pre_only:
            state.value_context[self.name] = block.norm1_context(shifted, kwargs["temb"])
        else:
            state.value_context[self.name] = block.norm1_context(shifted, emb=kwargs["temb"])[0]


def _unpacked_callback(callback, length: int):
    """The user's `callback_on_step_end`, shown `prompt_embeds` in the parent's shape (the full prompt's L tokens,
    not the packed contexts). A callback may return them unchanged; new prompt embeddings are refused."""

    def wrapped(pipe, step, timestep, callback_kwargs):
        packed = callback_kwargs.get("prompt_embeds")
        if packed is not None:
            callback_kwargs = {**callback_kwargs, "prompt_embeds": packed[:, :length]}
        outputs = callback(pipe, step, timestep, callback_kwargs)
        if outputs and "prompt_embeds" in outputs:
            if outputs["prompt_embeds"] is not callback_kwargs.get("prompt_embeds"):
                raise StructuredError(
                    "callback_on_step_end returned new prompt_embeds; with structured=... the prompt's phrases "
                    "are encoded once per call, so the callback may not replace them"
                )
            outputs = {**outputs, "prompt_embeds": packed}
        return outputs

    return wrapped


def _warn_unstructured(prompt: str) -> None:
    """A prompt without a noun phrase to structure (none found, only the whole prompt, or all past the text
    encoder's length) runs, with a warning naming it: its image is the unstructured one."""
    warnings.warn(
        f"structured: no noun phrase to structure in the prompt {short_repr(prompt)} (none found other than the "
        "whole prompt within the text encoder's length); its image is the unstructured one",
        UserWarning,
        stacklevel=4,
    )


def structured_phrases(prompt: str) -> list[str]:
    """The noun phrases a structured call on `prompt` structures (parsed; whole-prompt ones left out), as texts:
    what the tools record with a structured image."""
    return [phrase.text for phrase in _phrases_for([prompt], None)[0]]


def structured_modes(pipeline_class: type) -> tuple[str, ...]:
    """The `structured` modes a pipeline class takes: its own for the StructuredMixin pipelines, else none."""
    return pipeline_class._structured_modes if issubclass(pipeline_class, StructuredMixin) else ()


def _sub_phrases(prompt: str, phrases: list[Phrase]) -> list[Phrase]:
    """Only true sub-phrases: one covering the whole prompt would align W_p with itself and dilute the mean
    (the official `get_all_nps` keeps the full sentence as context 0 only)."""
    whole = prompt.strip(" .")
    return [p for p in phrases if prompt[p.start : p.end].strip(" .") != whole]


def _phrases_for(prompts: list[str], given) -> list[list[Phrase]]:
    """Parsed phrases per prompt, or the user's (located in the prompt; an error names a phrase not found);
    phrases that cover the whole prompt are left out."""
    if given is None:
        return [_sub_phrases(p, found) for p, found in zip(prompts, noun_phrases_batch(prompts), strict=True)]
    per_prompt = [given] if given and isinstance(given[0], str) else list(given)
    if len(per_prompt) != len(prompts):
        raise StructuredError(f"noun_phrases has {len(per_prompt)} lists for {len(prompts)} prompts")
    result = []
    for prompt, texts in zip(prompts, per_prompt, strict=True):
        found = []
        for text in texts:
            start = prompt.find(text)
            if start < 0:
                raise StructuredError(f"noun_phrases: {text!r} does not occur in the prompt {prompt!r}")
            found.append(Phrase(text, start, start + len(text)))
        result.append(_sub_phrases(prompt, found))
    return result
