"""Slurm orchestration: cluster profiles, sbatch rendering, the submitit executor, sweep manifests and status.

Importing this package is cheap (no submitit, no torch): the launcher and `vit-dt status` run on login nodes.
"""
