"""diffusers pipelines with SoftPAG and structured attention, the command line, batch jobs, tiny offline pipelines."""
