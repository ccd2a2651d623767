"""Training of the toy world's small diffusers pipelines on CPU.

Shared pieces: `tokenizer` (offline CLIP BPE and T5 tokenizers that keep every toy-world word whole),
`loop` (run set-up, the latent pool, the budgeted denoiser loop with EMA), `reuse` (`--reuse`: the VAE and
CLIP of another toy pipeline), `writer` (the atomic pipeline writer and run records). One runnable module per
architecture, none importing another: `sd3` (`python -m toyworld.train.sd3`), `flux`
(`python -m toyworld.train.flux`, also `... flux measure`), `sd15` (`python -m toyworld.train.sd15`).
"""

__all__: list[str] = []
