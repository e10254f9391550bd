"""Turning a run into records: result.json, the sweep's results store and the W&B run (rank 0 writes all three)."""
from __future__ import annotations

import datetime as _dt
import platform
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from vit_dt.config.batch import Batch
from vit_dt.config.schema import RootSchema
from vit_dt.measure import breakdown, hardware, metrics
from vit_dt.measure import memory as memory_model
from vit_dt.measure.energy import run_energy
from vit_dt.optim import optimizers
from vit_dt.records import provenance
from vit_dt.records.result import (
    ENERGY,
    EPOCH_ENERGY,
    SCHEMA_VERSION,
    SILENT_RANKS,
    STORE_NAME,
    steady_epochs,
    steady_mask,
    write_result,
)
from vit_dt.records.secrets import scrub_secrets
from vit_dt.records.store import ResultsStore
from vit_dt.run import balance
from vit_dt.run.distributed import DistEnv, gather_to_all_ranks


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def store_for(cfg: dict) -> ResultsStore:
    """The sweep's store, or for a lone `vit-dt train` run the out_dir's."""
    base = cfg.get("sweep_dir") or cfg["out_dir"]
    return ResultsStore(Path(base) / STORE_NAME)


def _identity(cfg: dict, run_dir: Path, env: DistEnv) -> dict:
    """Who ran what. Also called for a failed run, whose config may be the reason it failed: a key it lacks is
    recorded as missing (None), never as a default the run may not have had."""
    resources = cfg.get("resources") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(run_dir.resolve()),
        "run_name": cfg.get("run_name"),
        "sweep_dir": cfg.get("sweep_dir"),
        "point": cfg.get("point"),
        "cluster": cfg["cluster"]["name"],
        "layout": resources.get("layout"),
        "scaling": cfg["scaling"]["mode"],
        "engine": cfg["engine"],
        "precision": cfg["precision"],
        "zero_stage": cfg["deepspeed"]["zero_stage"] if cfg["engine"] == "deepspeed" else None,
        "bf16_mode": _bf16_mode(cfg),
        "fast_attention": cfg["model"].get("fast_attention"),
        "dataset": cfg["dataset"]["name"],
        "model": cfg["model"]["name"],
        **_geometry(cfg["model"]),
        "world_size": env.world_size,
        "nodes": env.nodes,
        "ranks_per_node": max(1, env.world_size // max(1, env.nodes)),
        "launch": env.source,
        "slurm_job_id": _slurm_job_id(),
    }


def _bf16_mode(cfg: dict) -> str | None:
    """The bf16 mode the run used (`auto` resolved); None unless precision=bf16 (or when the config is invalid)."""
    from vit_dt.config.ds_config import DeepSpeedConfigError, bf16_mode_for
    from vit_dt.config.typed import typed_config

    try:
        return bf16_mode_for(typed_config(cfg))
    except (DeepSpeedConfigError, KeyError, TypeError, ValueError):   # ConfigTypeError is a ValueError
        return None


def _geometry(model_cfg: dict) -> dict:
    """What sets the sequence length and the activation memory (docs/studies/high-resolution.md)."""
    image, patch = model_cfg.get("image_size"), model_cfg.get("patch_size")
    valid = isinstance(image, int) and isinstance(patch, int) and patch > 0 and image % patch == 0
    return {"image_size": image, "patch_size": patch,
            "tokens_per_image": metrics.tokens_per_image(model_cfg) if valid else None,
            "activation_checkpointing": model_cfg.get("activation_checkpointing")}


def _slurm_job_id() -> str | None:
    import os

    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def failed_result(cfg: dict, run_dir: Path, env: DistEnv, started: str, finished: str, error: str,
                  cause: str | None = None, epochs: list[dict] | None = None,
                  silent_ranks: list[dict] | None = None) -> dict:
    """The record of a run that failed: `error` in one line, its `cause` (FAILURE_CAUSES), the epochs it had
    measured before it failed (those of earlier attempts included), so a long run's work is not lost from the store,
    and the ranks that had gone silent (vit_dt.run.heartbeat.SilentRank.as_record) when a peer stopped answering."""
    epochs = list(epochs or [])
    return {"status": "failed", "error": error, "failure_cause": cause, SILENT_RANKS: list(silent_ranks or []),
            **_identity(cfg, run_dir, env),
            "started_at": started, "finished_at": finished, "epochs": epochs,
            "final_val_acc": epochs[-1]["val_acc"] if epochs else None, "config": scrub_secrets(cfg),
            provenance.PROVENANCE: run_provenance(run_dir)}


def run_provenance(run_dir: Path, rank_hardware: list[dict] | None = None) -> dict:
    """The provenance block (vit_dt/records/provenance.py) of this run: as submitted (<run_dir>/provenance.json;
    gathered here for a run nobody submitted), with what only the rank sees: where vit_dt was imported from, the
    installed packages and versions here, the machine. Never fails a run: a fact it cannot read is null."""

    import vit_dt
    from vit_dt.slurm.snapshot import provenance_here

    block = provenance.read_point(run_dir) or provenance_here()
    code, environment = block.setdefault(provenance.CODE, {}), block.setdefault(provenance.ENVIRONMENT, {})
    package = Path(vit_dt.__file__).resolve().parent
    code["imported_from"] = str(package)
    # vit_dt modules this rank loaded from anywhere else (an editable install's import hook fills in a module the
    # snapshot lacks from the checkout it points at): must be none, or the run mixed code versions
    code["foreign_modules"] = sorted(name for name, module in list(sys.modules.items())
                                     if name.startswith("vit_dt.") and getattr(module, "__file__", None)
                                     and package not in Path(module.__file__).resolve().parents)
    here = provenance.environment_fields()
    if environment.get(provenance.PACKAGES_SHA256) not in (None, here[provenance.PACKAGES_SHA256]):
        here["submitted_packages_sha256"] = environment[provenance.PACKAGES_SHA256]
    here["packages_file"] = environment.get("packages_file")
    here.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=_cudnn_version(), nccl=_nccl_version(),
                deepspeed=_deepspeed_version())
    block[provenance.ENVIRONMENT] = here
    block[provenance.MACHINE] = _machine(rank_hardware)
    block[provenance.CONTAINER] = {**(block.get(provenance.CONTAINER) or provenance.container_fields("none", None)),
                                   "seen": provenance.container_seen()}
    return scrub_secrets(block)


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def _nccl_version() -> str | None:
    try:
        if not torch.cuda.is_available():
            return None
        version = torch.cuda.nccl.version()
        return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:  # noqa: BLE001
        return None


def _machine(rank_hardware: list[dict] | None) -> dict:
    import os

    machine = provenance.empty_machine()
    seen = rank_hardware or [hardware_here()]
    nodes = sorted({r.get("node") or r.get("host") for r in seen})
    gpus = {}
    for r in seen:
        if r.get("gpu_name"):
            entry = gpus.setdefault(r.get("node") or r.get("host"), {"model": r["gpu_name"], "count": 0})
            entry["count"] += 1
    driver = _gpu_driver() if gpus else None
    machine.update(nodes=nodes, job_id=os.environ.get("SLURM_JOB_ID"),
                   array_job_id=os.environ.get("SLURM_ARRAY_JOB_ID"),
                   array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"),
                   slurm_nodelist=os.environ.get("SLURM_JOB_NODELIST"),
                   slurm_version=provenance.slurm_version() if os.environ.get("SLURM_JOB_ID") else None)
    if gpus:
        machine["gpus"] = [{"node": n, **g, "driver": driver} for n, g in sorted(gpus.items())]
    else:
        machine["gpus_reason"] = "no GPU: the ranks ran on CPU"
    return machine


def hardware_here() -> dict:
    return hardware.local_hardware(torch.device("cpu"))


def _gpu_driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def _merge_rank_summaries(per_epoch: list[list[dict]], epoch_records: list[dict] | None = None) -> list[dict]:
    """Per rank, the sample-weighted mean over the steady-state epochs: `per_epoch[i]` is epoch record i's
    breakdown, and the epochs steady_mask leaves out (each attempt's first, warm-up) are left out here too, unless
    that leaves no breakdown. Without aligned epoch records, the first epoch is the warm-up one."""
    if epoch_records is None or len(epoch_records) != len(per_epoch):
        epoch_records = [{"warmup": i == 0} for i in range(len(per_epoch))]
    steady = [e for e, keep in zip(per_epoch, steady_mask(epoch_records)) if keep and e]
    epochs = steady or [e for e in per_epoch if e]
    if not epochs:
        return []
    merged = []
    for rank in range(len(epochs[0])):
        rows = [e[rank] for e in epochs if rank < len(e)]
        weight = sum(r.get("samples", 0) for r in rows)
        keys = [k for k in rows[0] if k != "samples"]
        merged.append({k: (sum(r[k] * r.get("samples", 0) for r in rows) / weight if weight else 0.0)
                       for k in keys} | {"samples": weight})
    return merged


def epoch_row(record: dict) -> dict:
    """An epoch's W&B history row: its numbers under epoch/, the breakdown under epoch/breakdown_ms/."""
    flat = {f"epoch/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
    for key, value in (record.get("breakdown_ms") or {}).items():
        flat[f"epoch/breakdown_ms/{key}"] = value
    for key, value in (record.get(EPOCH_ENERGY) or {}).items():     # joules, J/image, watts; absent where None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"epoch/energy/{key}"] = value
    return flat


def epoch_rows(epochs: list[dict]) -> list[tuple[int, dict]]:
    """(global step at the epoch's end, W&B row) of each epoch record, as on_epoch_end logged them."""
    rows, step = [], 0
    for record in epochs:
        step += int(record["steps"])
        rows.append((step, epoch_row(record)))
    return rows


def wandb_group(cfg: Mapping[str, Any]) -> str | None:
    """The W&B group of a run: `wandb.group`, else its sweep directory's name, so a sweep's points compare side by
    side in W&B (one run per point, not per rank); a lone `vit-dt train` run has none."""
    if cfg["wandb"].get("group"):
        return cfg["wandb"]["group"]
    sweep = cfg.get("sweep_dir")
    return Path(sweep).name if sweep else None


class RunRecorder:
    def __init__(self, cfg: dict, run_dir: Path, env: DistEnv, device: torch.device, batch: Batch, info, model,
                 started: str, ds_config: dict | None, config: RootSchema | None = None):
        """`cfg`: the resolved config, recorded as data; `config`: the same typed (vit_dt.config.typed), for what
        the recorder reads from it (built from `cfg` when not given)."""
        from vit_dt.config.typed import typed_config

        self.config = config if config is not None else typed_config(cfg)
        self.cfg, self.run_dir, self.env, self.device, self.batch, self.info = cfg, run_dir, env, device, batch, info
        self.started, self.ds_config = started, ds_config
        self.flops_per_image = metrics.vit_flops_per_image(cfg["model"], info.num_classes, training=True)
        self.hardware_flops_per_image = metrics.hardware_flops_per_image(cfg["model"], info.num_classes)
        # ZeRO-3 has already partitioned the parameters here: their full size is ds_numel, numel() is 0
        self.num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.gpu_model = metrics.gpu_model_from_name(torch.cuda.get_device_name(device)) \
            if device.type == "cuda" else None
        # host, Slurm node, GPU name per rank
        self.rank_hardware = gather_to_all_ranks(hardware.local_hardware(device))
        self.hostnames = [seen["host"] for seen in self.rank_hardware]
        self.memory_probe: memory_model.MemoryProbe | None = None
        self.epochs: list[dict] = []         # the epochs measured so far, earlier attempts' included
        self.wandb = None
        if env.is_main:
            from vit_dt.records.wandb_run import WandbRun

            run_dir.mkdir(parents=True, exist_ok=True)
            # resumable: one W&B run per run directory, continued by every restart (docs/wandb.md)
            self.wandb = WandbRun.start(cfg, run_dir, rank=env.rank, group=wandb_group(cfg), job_type=cfg["scaling"]["mode"],
                                        tags=self._tags(), name=cfg.get("run_name") or self._default_name(),
                                        resumable=True)
        # what produced this run: in result.json, the store line and the W&B config (rank 0 only; gathered once)
        self.provenance = run_provenance(run_dir, self.rank_hardware) if env.is_main else None
        if self.wandb:
            self.wandb.add_config({provenance.PROVENANCE: self.provenance})

    def _tags(self) -> list[str]:
        tags = [f"cluster:{self.cfg['cluster']['name']}", f"layout:{self.cfg.get('resources', {}).get('layout')}",
                f"engine:{self.cfg['engine']}", f"gpu:{self.gpu_model or 'cpu'}", f"world:{self.env.world_size}"]
        return tags + list(self.cfg["wandb"].get("tags") or [])

    def _default_name(self) -> str:
        return (f"{self.cfg['model']['name']}-{self.cfg['dataset']['name']}-n{self.env.nodes}"
                f"x{max(1, self.env.world_size // max(1, self.env.nodes))}-b{self.batch.global_}")

    def watch_memory(self, engine) -> None:
        """Measure the model states this rank holds over the first optimizer steps (memory_model_gb)."""
        self.memory_probe = memory_model.MemoryProbe.attach(engine, self.device)

    def resumed_from(self, state) -> None:
        """Training continues from a checkpoint (its TrainState): the W&B run continues after the checkpoint's
        global step. Epoch rows that the interrupted attempt logged but never got onto disk (W&B buffers its offline
        log for up to 15 s, and a requeue kills the job) are logged again from the checkpoint's epoch records."""
        self.epochs = state.epochs
        if not self.wandb:
            return
        global_step = 0
        for global_step, row in epoch_rows(state.epochs):
            self.wandb.log(row, step=global_step)      # skipped when an earlier segment of the run holds it
        self.wandb.resumed_from(global_step)

    def on_step(self, step: int, values: dict) -> None:
        if self.wandb:
            self.wandb.log({f"step/{k}": v for k, v in values.items()}, step=step)

    def on_epoch_end(self, state, record: dict) -> None:
        self.epochs = state.epochs           # what a failure record keeps (failed_result)
        if self.wandb:
            # At the epoch's last optimizer step: W&B drops rows whose step goes back, and merges equal steps.
            self.wandb.log(epoch_row(record), step=sum(e["steps"] for e in state.epochs))

    def finish(self, state, module: torch.nn.Module) -> dict | None:
        from vit_dt.run.loop import parameter_checksum

        checksums = gather_to_all_ranks(parameter_checksum(module))
        peak = gather_to_all_ranks(metrics.peak_memory_gb(self.device))
        memory = gather_to_all_ranks(self.memory_probe.summary() if self.memory_probe else None)
        if not self.env.is_main:
            return None
        result = self._summarise(state, checksums, peak)
        result["memory_model_gb"] = memory_model.combine(memory)
        write_result(self.run_dir, result)
        store_for(self.cfg).append(result)
        if self.wandb:
            self.wandb.summary({k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None}
                               | {f"energy/{k}": v for k, v in result[ENERGY].items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
                               | {"status": result["status"]})
            self.wandb.finish(0)
        return result

    def _summarise(self, state, checksums: list[float], peak: list[float | None]) -> dict:
        epochs = state.epochs
        steady = steady_epochs(epochs)     # without each attempt's first (warm-up) epoch, docs/metrics.md
        seconds = sum(e["time_s"] for e in steady)
        images = sum(e["train_samples_seen"] for e in steady)
        rates = metrics.throughput(images, seconds, self.env.world_size)
        tflops = metrics.achieved_tflops(rates["img_per_s_per_gpu"], self.flops_per_image)
        hardware_tflops = metrics.achieved_tflops(rates["img_per_s_per_gpu"], self.hardware_flops_per_image)
        # fp32 matmuls run as TF32 when torch allows it: measure against that peak, not the far lower FP32 one.
        peak_tflops = metrics.peak_tflops(self.gpu_model, metrics.matmul_precision(self.cfg["precision"]))
        per_rank = _merge_rank_summaries(state.breakdowns, epochs)
        analysis = breakdown.analyse(per_rank) if per_rank else None
        spread = max(checksums) - min(checksums)
        return {
            "status": "completed", "error": None, **_identity(self.cfg, self.run_dir, self.env),
            "started_at": self.started, "finished_at": _now(), "hostnames": sorted(set(self.hostnames)),
            "ranks": hardware.ranks_for_run(self.cfg, self.rank_hardware),   # per rank: host, node, GPU model
            "device": self.device.type, "gpu_model": self.gpu_model,
            "micro_batch": self.batch.micro, "grad_accum": self.batch.grad_accum, "global_batch": self.batch.global_,
            **optimizers.lr_record(self.config.optimizer, self.batch.global_),  # lr_rule, lr_effective, ...
            "train_samples": self.info.train_samples, "val_samples": self.info.val_samples,
            "num_params": self.num_params, "flops_per_image": self.flops_per_image,
            "hardware_flops_per_image": self.hardware_flops_per_image,
            "epochs": epochs,
            "final_val_acc": epochs[-1]["val_acc"] if epochs else None,
            "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
            "epoch_time_s_mean": seconds / len(steady) if steady else None,
            "epoch_time_s_all_mean": sum(e["time_s"] for e in epochs) / len(epochs) if epochs else None,
            "img_per_s": rates["img_per_s"], "img_per_s_per_gpu": rates["img_per_s_per_gpu"],
            "tflops": tflops, "mfu": metrics.mfu(tflops, peak_tflops),
            "hardware_tflops": hardware_tflops, "hfu": metrics.mfu(hardware_tflops, peak_tflops),
            "peak_mem_gb": max((p for p in peak if p is not None), default=None),
            ENERGY: run_energy(epochs, steady),
            "breakdown_ms": {"per_rank": analysis["per_rank"], "mean": analysis["mean"]} if analysis else None,
            "comm_share": analysis["comm_share"] if analysis else None,
            "data_wait_share": analysis["data_wait_share"] if analysis else None,
            "straggler": analysis["straggler"] if analysis else None,
            # per-rank micro-batches, speeds, compute-time spread per epoch (trainer.balance, vit_dt/run/balance.py)
            "balance": balance.summarise(self.config.trainer.balance, state.balance,
                                         self.batch.micro * self.env.world_size),
            "param_checksums": checksums,
            "replicas_in_sync": spread <= 1e-6 * max(1.0, abs(checksums[0])),
            "deepspeed_config": self.ds_config,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "deepspeed": _deepspeed_version()},
            "config": scrub_secrets(self.cfg),
            provenance.PROVENANCE: self.provenance,
        }


def _deepspeed_version() -> str | None:
    try:
        import deepspeed

        return deepspeed.__version__
    except ImportError:
        return None
