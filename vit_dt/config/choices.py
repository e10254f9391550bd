"""Every valid name a config value can take, in one place.

Validation, the engines, the data pipeline, the profile parser and the analysis all import their lists from here,
so a name is added once and every check and every "valid: ..." message follows. Torch-free on purpose: the login
node validates a whole sweep against these lists without importing torch.
"""
from __future__ import annotations

# Root keys
PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("deepspeed", "ddp")

# dataset.name: the in-memory ones need nothing on disk; the file ones are read from dataset.root
FILE_DATASETS = ("cifar10", "cifar100", "imagenet100")
DATASETS = ("digits", "synthetic") + FILE_DATASETS

# model.name (the dimensions each name fixes live with the models: vit_dt/models/catalog.py)
MODEL_NAMES = ("vit_tiny", "vit_b_16")

# scaling
SCALING_MODES = ("none", "strong", "weak")
STRONG_FIXED = ("micro", "global")           # scaling.fixed under strong scaling

# trainer
LR_SCHEDULES = ("constant", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BALANCE_MODES = ("off", "speed")

# optimizer
OPTIMIZERS = ("adamw", "sgd", "lamb")
MASTER_UPDATES = ("separate", "fused")       # optimizer.master_update (vit_dt/optim/master_adamw.py)
LR_RULES = ("none", "linear", "sqrt")        # optimizer.lr_scaling

# deepspeed
BF16_MODES = ("auto", "master", "autocast", "native")
ZERO_STAGES = (0, 1, 2, 3)

# wandb
WANDB_MODES = ("offline", "online", "disabled")

# resources and cluster profiles
LAYOUTS = ("intra", "inter", "grid")
AUTO_TIME = "auto"     # resources.time_min=auto: the limit comes from the cost estimate (vit_dt/analysis/estimate.py)
SCHEDULERS = ("local", "slurm")
MPI_LAUNCHERS = ("srun_mpi", "mpirun")
SLURM_LAUNCHERS = ("srun",) + MPI_LAUNCHERS  # how a Slurm job starts its ranks
LAUNCHERS = ("local",) + SLURM_LAUNCHERS
# cluster.container.runtime (vit_dt/slurm/container.py): how each rank is put inside a container image; none: on the
# node itself, as without a container
CONTAINER_RUNTIMES = ("none", "apptainer", "singularity", "pyxis", "charliecloud")
