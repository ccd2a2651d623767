"""The front ends built on the library (layer 3): `cli` (the `headhunter` command), `batch` and `batch_ray` (batch
jobs), `settings` (one record of a generation's settings, the CLI's and demo's options), `console` (quiet
terminal output), `demo` (the Gradio demo's logic; app.py holds its layout and callbacks)."""
