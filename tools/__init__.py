"""Front-end tools: the demo's logic (and later the CLI, batch jobs, settings)."""
