"""Typed schemas for the config tree in conf/: a misspelt key or a wrong type fails at composition, naming the key.

How they apply (Hydra's "Structured Config schema" pattern, through defaults lists):
  * conf/config.yaml's defaults list starts with `- schema`, RootSchema: the root keys and every group, each
    typed by its group's schema. A cluster profile or model a user adds is checked without anything to copy.
  * Groups whose options carry different keys (dataset, optimizer, scaling) are typed at the root by what all
    their options share; each option names the schema of its own keys first in its defaults list, e.g.
    conf/optimizer/sgd.yaml starts with `defaults: [schema_sgd, _self_]`. One schema holding every option's keys
    would let a key an option does not read through (OptimizerSpec refuses `momentum` for AdamW, for example).
Hydra merges each YAML onto its schema, so every key must be a declared field (`Key 'micro_bach' not in
'TrainerSchema'`) and every value converts to the field's type or is refused (`Value 'abc' of type 'str' could
not be converted to Integer ... full_key: trainer.epochs`): in the YAML, on the command line, at every sweep point.
(The root-level approach rather than a `defaults` line in every group YAML: it is ~10 fewer configs for Hydra to
load and merge per composition, and no line to forget.)

Where defaults live: in the YAML, which is what users read and copy. A field whose key every option of its group
provides is type-only here (MISSING, `???`): the YAML value is the default, stated once. A field that only some
files provide (an optional cluster-profile key such as `signal_delay_s`) needs a value in the schema, since the
composed config holds every schema field; that value is stated here, and the typed profile
(vit_dt.slurm.profile) takes its defaults from these fields, so it is still stated once.

Types are what the code reads; value ranges and cross-field rules (micro_batch >= 1, ZeRO vs LAMB, ...) stay in
vit_dt.config.validate, which runs after composition. OmegaConf converts where it can: `bool` fields take
true/false/yes/no/on/off/1/0, `int` fields take "12" but not 1.5, `float` fields take integers (1 -> 1.0).

Importing this module registers the schemas in Hydra's ConfigStore. It imports no torch and nothing of vit-dt: vit_dt.config.compose and the Hydra launcher plugin import it on login nodes.

No `from __future__ import annotations`: OmegaConf reads the field types at run time.
"""
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


# --- cluster: one schema for every profile, user-written ones included (docs/clusters.md) -------------------------
@dataclass
class ContainerSchema:
    """cluster.container: the image every rank runs in (vit_dt/slurm/container.py; docs/clusters.md, Containers)."""
    runtime: str = "none"          # none, apptainer, singularity, pyxis, charliecloud (config/choices.py)
    image: Optional[str] = None    # a .sif / SquashFS file, a directory image, or a registry reference
    python: Optional[str] = None   # the interpreter inside the image; None: cluster.python, else the submitting one
    binds: List[str] = field(default_factory=list)   # SRC[:DST] host paths, besides the sweep, data and code
    env: List[str] = field(default_factory=list)     # names whose job values win over the image's
    flags: List[str] = field(default_factory=list)   # extra arguments of the runtime (pyxis: of srun)


@dataclass
class PartitionContainerSchema:
    """cluster.partitions.<name>.container: null keys keep the profile's value; a `runtime` replaces the whole
    block (another runtime inherits nothing)."""
    runtime: Optional[str] = None
    image: Optional[str] = None
    python: Optional[str] = None
    binds: Optional[List[str]] = None
    env: Optional[List[str]] = None
    flags: Optional[List[str]] = None


@dataclass
class PartitionSchema:
    gpus_per_node: Any = MISSING                      # an integer >= 0, or "auto" (the GPUs this machine shows)
    gpu_model: Optional[str] = None
    nodes: int = MISSING
    max_time_min: int = MISSING
    cpus_per_task: Optional[int] = None                # default for resources.cpus_per_task
    mem_gb: Optional[float] = None                     # default for resources.mem_gb (per node)
    cpus_per_node: Optional[int] = None                # when known, tasks x cpus_per_task is checked against it
    node_gpus: Any = None   # {hostlist: model} or [{nodes, gpu_model}], parsed by vit_dt.measure.hardware
    # this partition's container over cluster.container (an instance, not None: OmegaConf cannot merge a mapping
    # into a typed node that is null; all its keys null: the profile's container as it is)
    container: PartitionContainerSchema = field(default_factory=PartitionContainerSchema)


@dataclass
class InterconnectSchema:
    intra_node_gbps: float = 10.0     # gigaBITS per second
    inter_node_gbps: float = 10.0
    latency_us: float = 20.0


@dataclass
class RemoteSchema:
    """cluster.remote: the login node `vit-dt sweep --remote` submits to over SSH (vit_dt/slurm/remote.py)."""
    host: Optional[str] = None            # None: no login node here; `--remote [user@]host[:port]` names one
    user: Optional[str] = None            # None: ssh's choice (~/.ssh/config, else the local user name)
    port: Optional[int] = None            # None: ssh's choice (~/.ssh/config, else 22)
    python: str = "python3"               # the login node's Python with vit-dt's dependencies (a venv's bin/python)
    work_dir: str = "vit-dt"              # on the login node (relative: to the home directory); sweeps in <it>/sweeps/
    setup: List[str] = field(default_factory=list)        # shell lines run there first (module load ...)
    ssh_options: List[str] = field(default_factory=list)  # extra ssh arguments: -i KEY, -J JUMP, -o Key=Value
    control_path: str = "~/.ssh/vit-dt-%C"   # the shared connection's socket on this machine (ssh's ControlPath)
    control_persist: str = "10m"          # how long the shared connection stays open after the last command


@dataclass
class ClusterSchema:
    """Field order is the profiles' key order, so a composed config reads like the YAML it came from."""
    name: str = MISSING
    scheduler: str = MISSING
    launcher: str = MISSING
    account: Optional[str] = None
    qos: Optional[str] = None
    default_partition: str = MISSING
    partitions: Dict[str, PartitionSchema] = MISSING
    setup: List[str] = field(default_factory=list)
    python: Optional[str] = None          # how a job starts Python; None: the submitting interpreter
    container: ContainerSchema = field(default_factory=ContainerSchema)   # runtime none: no container
    env: Dict[str, str] = field(default_factory=dict)  # exported in the job; "$VAR" expands there
    mpirun: str = "mpirun"               # the mpirun to call (an MPI matching the one mpi4py loads)
    signal_delay_s: int = 90              # USR2 this long before the time limit: checkpoint, then requeue
    requeue: bool = True
    interconnect: InterconnectSchema = field(default_factory=InterconnectSchema)
    srun_args: List[str] = field(default_factory=list)
    mpirun_args: List[str] = field(default_factory=list)
    sbatch_args: Dict[str, Any] = field(default_factory=dict)   # free-form: extra #SBATCH --key=value lines
    remote: RemoteSchema = field(default_factory=RemoteSchema)  # submitting from another machine over SSH


# --- resources, model, trainer, deepspeed, wandb: every option has the same keys --------------------------------
@dataclass
class ResourcesSchema:
    layout: str = MISSING
    gpus: Optional[int] = MISSING
    nodes: Optional[int] = MISSING
    gpus_per_node: Optional[int] = MISSING
    partition: Optional[str] = MISSING
    time_min: Any = MISSING          # minutes (an integer >= 1) or "auto": checked by vit_dt/slurm/shape.py
    time_margin: float = MISSING     # time_min=auto: the estimate's training time x this (vit_dt/analysis/estimate.py)
    cpus_per_task: Optional[int] = MISSING
    mem_gb: Optional[float] = MISSING


@dataclass
class ModelSchema:
    name: str = MISSING
    image_size: int = MISSING
    patch_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    hidden_dim: int = MISSING
    mlp_dim: int = MISSING
    dropout: float = MISSING
    activation_checkpointing: bool = MISSING
    fast_attention: bool = MISSING


@dataclass
class TrainerSchema:
    epochs: int = MISSING
    micro_batch: int = MISSING
    grad_accum: int = MISSING
    global_batch: Optional[int] = MISSING
    nproc: int = MISSING
    seed: int = MISSING
    warmup_epochs: float = MISSING
    lr_schedule: str = MISSING
    grad_clip: Optional[float] = MISSING
    compile: bool = MISSING
    compile_mode: str = MISSING
    num_workers: Optional[int] = MISSING
    timer_sample_every: int = MISSING
    timer_warmup_steps: int = MISSING
    max_steps_per_epoch: Optional[int] = MISSING
    log_every: int = MISSING
    dist_timeout_s: float = MISSING
    checkpoint: bool = MISSING
    balance: str = MISSING


@dataclass
class DeepSpeedSchema:
    zero_stage: int = MISSING
    bf16_mode: str = MISSING
    wall_clock_breakdown: bool = MISSING
    overrides: Dict[str, Any] = MISSING   # free-form: merged into DeepSpeed's JSON, checked by ds_config


@dataclass
class WandbSchema:
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: List[str] = MISSING


# --- dataset: the keys differ by dataset ------------------------------------------------------------------------
@dataclass
class DatasetSchema:
    """Every dataset's keys; synthetic's schema adds its sizes, the real datasets' schemas add `hflip`."""
    name: str = MISSING
    root: Optional[str] = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING


@dataclass
class SyntheticDatasetSchema(DatasetSchema):
    train_size: int = MISSING
    val_size: int = MISSING


@dataclass
class ImageDatasetSchema(DatasetSchema):
    """cifar10, imagenet100 (and the base of cifar100, digits)."""
    hflip: bool = MISSING


@dataclass
class Cifar100DatasetSchema(ImageDatasetSchema):
    label_type: str = MISSING


@dataclass
class DigitsDatasetSchema(ImageDatasetSchema):
    val_fraction: float = MISSING
    split_seed: int = MISSING


# --- optimizer: each optimizer's own keys (vit_dt.optimizers._OWN_KEYS) -------------------------------------------
@dataclass
class OptimizerSchema:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    fused: Optional[bool] = MISSING
    lr_scaling: str = MISSING
    base_batch: Optional[int] = MISSING


@dataclass
class AdamWSchema(OptimizerSchema):
    betas: List[float] = MISSING
    eps: float = MISSING
    master_update: str = MISSING


@dataclass
class SGDSchema(OptimizerSchema):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class LambSchema(OptimizerSchema):
    betas: List[float] = MISSING
    eps: float = MISSING
    max_trust: float = MISSING
    min_trust: float = MISSING


# --- scaling: mode plus the mode's own key ----------------------------------------------------------------------
@dataclass
class ScalingSchema:
    mode: str = MISSING


@dataclass
class StrongScalingSchema(ScalingSchema):
    fixed: str = MISSING


@dataclass
class WeakScalingSchema(ScalingSchema):
    fraction_per_gpu: float = MISSING


# --- the root ---------------------------------------------------------------------------------------------------
@dataclass
class DebugSchema:
    """conf/debug/: test-only knobs, absent (null) unless a test asks for them (debug=slow_rank)."""
    # {rank: seconds}: typed Any because OmegaConf cannot merge a mapping into a typed dict that is null (as these
    # are until a test sets them); vit_dt.config.validate checks the values.
    delay_s: Any = MISSING                # {rank: seconds} slept in every forward
    delay_per_sample_s: Any = MISSING     # {rank: seconds per image}


@dataclass
class RootSchema:
    """conf/config.yaml: its own keys, and each group typed by its schema (dataset, optimizer and scaling by the
    keys all their options share; each option adds its own)."""
    cluster: ClusterSchema = MISSING
    resources: ResourcesSchema = MISSING
    dataset: DatasetSchema = MISSING
    model: ModelSchema = MISSING
    scaling: ScalingSchema = MISSING
    trainer: TrainerSchema = MISSING
    optimizer: OptimizerSchema = MISSING
    deepspeed: DeepSpeedSchema = MISSING
    wandb: WandbSchema = MISSING
    precision: str = MISSING
    engine: str = MISSING
    out_dir: str = MISSING
    run_name: Optional[str] = MISSING
    sweep_dir: Optional[str] = MISSING     # set by the sweep launcher for each point
    point: Optional[int] = MISSING         # the point's index in its sweep
    repeats: int = MISSING                 # a sweep runs each point this many times, seeds trainer.seed + 0..N-1
    debug: Optional[DebugSchema] = None    # conf/config.yaml: `debug: null`; production configs leave it so


# group (None: the root) -> {name in the ConfigStore: schema}; the YAMLs name these in their defaults lists.
SCHEMAS: Dict[Optional[str], Dict[str, Any]] = {
    None: {"schema": RootSchema},
    "dataset": {"schema": ImageDatasetSchema, "schema_synthetic": SyntheticDatasetSchema,
                "schema_cifar100": Cifar100DatasetSchema, "schema_digits": DigitsDatasetSchema},
    "optimizer": {"schema_adamw": AdamWSchema, "schema_sgd": SGDSchema, "schema_lamb": LambSchema},
    "scaling": {"schema_strong": StrongScalingSchema, "schema_weak": WeakScalingSchema},
}


def undeclared_keys(cfg: DictConfig, prefix: str = "") -> Dict[str, List[str]]:
    """Keys of `cfg` that its schemas do not declare (full dotted key -> the keys that schema declares).

    A plain override of an undeclared key fails inside Hydra, but `+trainer.micro_bach=32` (the form Hydra's own
    error message suggests) and `++...` lift the check for that one update: the key would be added and silently
    ignored. Free-form fields (Dict[str, Any], such as deepspeed.overrides) have no dataclass type: not checked.
    """
    found: Dict[str, List[str]] = {}
    schema = OmegaConf.get_type(cfg)
    if is_dataclass(schema):
        declared = [f.name for f in fields(schema)]
        found.update({f"{prefix}{key}": declared for key in cfg.keys()
                      if key not in declared and not (prefix == "" and key == "hydra")})   # Hydra's own node
    for key in cfg.keys():
        value = cfg._get_node(key)
        # a null or missing node (debug: null, say) has no keys to check
        if isinstance(value, DictConfig) and not (value._is_none() or value._is_missing()) \
                and not (prefix == "" and key == "hydra"):
            found.update(undeclared_keys(value, f"{prefix}{key}."))
    return found


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: storing again replaces the entry)."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=group, name=name, node=node, provider="vit_dt")


register()
