"""The front ends built on the library (layer 3): `cli` (the `headhunter` command), `search_run` (a head search run
and reported, for the command and the demo), `batch` and `batch_ray` (batch jobs), `settings` (one record of a
generation's settings, the CLI's and demo's options), `console` (quiet terminal output), and the Gradio demo's logic
without Gradio: `demo` (shared helpers), `demo_api` (HTTP payload checks), `demo_model` (Generate and Head search),
`demo_structured`, `demo_views`. app.py holds the demo's layout and callbacks."""
