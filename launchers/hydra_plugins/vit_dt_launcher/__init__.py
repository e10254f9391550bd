"""vit-dt's Hydra launcher (`hydra/launcher=vitdt`): one Slurm job array per resource shape, fire-and-forget."""
