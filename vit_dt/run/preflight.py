"""Checks that run before a big sweep is queued: what every task of a short preflight job reports, and the
dataset verification the sweep also runs on the login node.

`run_rank(cfg, run_dir)` is the entry each task of a `vit-dt preflight` job runs (through the same sbatch
script, launcher and submitit runner as a training point). Each rank writes `<run_dir>/rank<R>.json`:

    identity    host (SLURMD_NODENAME), rank, local rank, CUDA_VISIBLE_DEVICES, the device torch sees, CPUs
    checks      dataset   the root is readable and complete (local rank 0 of each node; vit_dt.data verifiers)
                wandb     the mode the runs would use, and whether `online` has credentials (rank 0)
                network   the master address resolves, the interface that reaches it, NCCL/GLOO_SOCKET_IFNAME
                          name interfaces this node has (every rank, before the rendezvous: vit_dt.run.netcheck)
                rendezvous  init_process_group with a short timeout (every rank)
                device    every task sees a device of its own (rank 0, over all ranks' identities)
                allreduce bus bandwidth like nccl-tests: busbw = algbw * 2(n-1)/n (rank 0; gloo on CPU, NCCL on GPU)

A rank writes its file before the rendezvous too, so a job that hangs there still says who got that far.
The login side (`vit_dt.commands.preflight`) merges the files into one verdict table.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vit_dt import atomic
from vit_dt.data.verify import verify_dataset
from vit_dt.run import distributed as _distributed

# A Slurm task imports this module before torch: OpenMP waits passively on CPU-only nodes (distributed.py).
_distributed.quiet_openmp()

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}
CPU_SIZES = (64 << 10, 1 << 20, 8 << 20)                  # bytes per all-reduce: gloo over TCP on CPU ranks
GPU_SIZES = (1 << 20, 16 << 20, 128 << 20, 512 << 20)     # NCCL: large messages reach the link's bandwidth
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class Check:
    name: str
    verdict: str    # PASS | WARN | FAIL | SKIP
    detail: str


@dataclass
class Settings:
    """`cfg["preflight"]`, set by the login side for each job."""

    gpus_per_node: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    sizes: tuple[int, ...] | None = None     # None: CPU_SIZES or GPU_SIZES by backend
    iters: int | None = None                 # None: 5 on CPU, 20 on GPU
    datasets: list[dict[str, Any]] = field(default_factory=list)   # every distinct dataset of the shape's points
    wandb_modes: list[str] = field(default_factory=list)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "Settings":
        raw = dict(cfg.get("preflight") or {})
        sizes = raw.get("sizes")
        return cls(gpus_per_node=int(raw.get("gpus_per_node", 0)),
                   timeout_s=float(raw.get("timeout_s", DEFAULT_TIMEOUT_S)),
                   sizes=tuple(int(s) for s in sizes) if sizes else None,
                   iters=int(raw["iters"]) if raw.get("iters") else None,
                   datasets=list(raw.get("datasets") or [cfg.get("dataset") or {}]),
                   wandb_modes=list(raw.get("wandb_modes") or []))


def run_rank(cfg: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Every task of a preflight job: check, write rank<R>.json, return the same record."""
    from vit_dt.run import distributed

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_cfg(cfg)
    record: dict[str, Any] = {"identity": _identity_before_rendezvous(), "checks": []}
    checks: list[Check] = record["checks"]
    try:
        env = distributed.discover(cfg["cluster"].get("launcher"))
    except Exception as exc:  # no rank: nothing else can run
        checks.append(Check("rendezvous", FAIL, f"rank discovery failed: {type(exc).__name__}: {exc}"))
        return _write(run_dir, record)
    record["identity"].update(rank=env.rank, world_size=env.world_size, local_rank=env.local_rank,
                              node_rank=env.node_rank, launch=env.source)
    distributed.prepare_accelerator_env()
    record["identity"].update(_device_identity(env.local_rank))
    checks.append(_dataset_check(settings, env.local_rank))
    checks.append(_network_check(env.master_addr, env.master_port))
    if env.rank == 0:
        checks.append(_wandb_check(cfg, settings))
    _write(run_dir, record)  # before the rendezvous: a hang there still leaves this rank's report

    import torch.distributed as dist

    tic = time.perf_counter()
    try:
        distributed.init_process_group(env, timeout_s=settings.timeout_s)
        dist.barrier()
    except Exception as exc:
        checks.append(Check("rendezvous", FAIL, f"{env.master_addr}:{env.master_port}, {env.world_size} rank(s), "
                                                f"timeout {settings.timeout_s:g} s: {type(exc).__name__}: {exc}"))
        return _write(run_dir, record)
    checks.append(Check("rendezvous", PASS, f"{dist.get_backend()} at {env.master_addr}:{env.master_port}, "
                                            f"{env.world_size} rank(s) in {time.perf_counter() - tic:.2f} s"))
    try:
        identities = distributed.gather_to_all_ranks(record["identity"])
        if env.rank == 0:
            record["identities"] = identities
            checks.append(device_check(identities, settings.gpus_per_node))
        bandwidth = measure_allreduce(settings, env.local_rank)
        if env.rank == 0:
            record["allreduce"] = bandwidth
            checks.append(bandwidth_check(bandwidth, env.world_size, dist.get_backend()))
    except Exception as exc:
        checks.append(Check("allreduce", FAIL, f"{type(exc).__name__}: {exc}"))
    finally:
        distributed.destroy_process_group()
    return _write(run_dir, record)


def _write(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    record = {**record, "checks": [asdict(c) if isinstance(c, Check) else c for c in record["checks"]]}
    rank = record["identity"].get("rank", record["identity"].get("rank_label", "x"))
    atomic.write_text(run_dir / f"rank{rank}.json", json.dumps(record, indent=1, default=str))
    return record


def _identity_before_rendezvous() -> dict[str, Any]:
    label = os.environ.get("SLURM_PROCID") or os.environ.get("SUBMITIT_LOCAL_GLOBALID") or os.environ.get("RANK", "0")
    return {"rank_label": label, "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cpus": len(os.sched_getaffinity(0)), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _device_identity(local_rank: int) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)  # before NCCL's rendezvous: each rank's communicator on its own GPU
        props = torch.cuda.get_device_properties(index)
        return {"device": f"cuda:{index}", "device_name": props.name, "cuda_devices_seen": torch.cuda.device_count(),
                "device_uuid": str(getattr(props, "uuid", ""))}
    return {"device": "cpu", "device_name": "cpu", "cuda_devices_seen": 0, "device_uuid": None}


def _network_check(master_addr: str, master_port: int) -> Check:
    from vit_dt.run.netcheck import network_report

    ok, detail = network_report(master_addr, master_port, os.environ)
    return Check("network", PASS if ok else FAIL, detail)


def _dataset_check(settings: Settings, local_rank: int) -> Check:
    if local_rank != 0:
        return Check("dataset", SKIP, "checked by local rank 0 of this node")
    lines, failed = [], False
    for dataset_cfg in settings.datasets:
        try:
            lines.append(verify_dataset(dataset_cfg))
        except (ValueError, OSError) as exc:
            failed = True
            lines.append(f"{dataset_cfg.get('name')} (dataset.root={dataset_cfg.get('root')}): {exc}")
    return Check("dataset", FAIL if failed else PASS, "; ".join(lines) or "no dataset configured")


def _wandb_check(cfg: Mapping[str, Any], settings: Settings) -> Check:
    from vit_dt.records.wandb_run import resolve_mode

    try:
        modes = sorted(set(settings.wandb_modes or [resolve_mode(cfg)]))
    except ValueError as exc:
        return Check("wandb", FAIL, str(exc))
    notes, verdict = [], PASS
    for mode in modes:
        if mode == "disabled":
            notes.append("disabled: no W&B runs are written")
            continue
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            return Check("wandb", FAIL, f"mode {mode} but wandb cannot be imported here: {exc}")
        if mode == "offline":
            notes.append("offline: runs are written under each run dir; upload them later with `vit-dt sync`")
        elif _has_wandb_credentials():
            notes.append("online: an API key is available on this node (value not shown)")
        else:
            verdict = WARN
            notes.append("online, but no API key on this node (WANDB_API_KEY or ~/.netrc): runs would fall back "
                         "to offline")
    return Check("wandb", verdict, "; ".join(notes))


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def device_check(identities: list[dict[str, Any]], gpus_per_node: int) -> Check:
    """Each task must see a device of its own: on a GPU shape, a distinct visible GPU per task on each node and
    a CUDA runtime that sees it; on a CPU shape, CPUs (reported, always usable)."""
    ranks = sorted(identities, key=lambda i: i.get("rank", 0))
    shown = ", ".join(f"rank {i.get('rank')} {i.get('node')} {i.get('device')}"
                      + (f" ({i.get('device_name')}, CUDA_VISIBLE_DEVICES={i.get('cuda_visible_devices')})"
                         if gpus_per_node else f" ({i.get('cpus')} cpu)") for i in ranks)
    if not gpus_per_node:
        return Check("device", PASS, f"CPU ranks: {shown}")
    problems = []
    seen: dict[tuple[str, str], int] = {}
    for ident in ranks:
        visible = ident.get("cuda_visible_devices")
        device_key = ident.get("device_uuid") or visible
        if not visible:
            problems.append(f"rank {ident.get('rank')} on {ident.get('node')} has no CUDA_VISIBLE_DEVICES")
        elif not ident.get("cuda_devices_seen"):
            problems.append(f"rank {ident.get('rank')} on {ident.get('node')}: CUDA_VISIBLE_DEVICES={visible} but "
                            f"torch sees no CUDA device")
        key = (str(ident.get("node")), f"{device_key}|{ident.get('device')}")
        if device_key and key in seen:
            problems.append(f"ranks {seen[key]} and {ident.get('rank')} on {ident.get('node')} share one GPU "
                            f"({ident.get('device')}, CUDA_VISIBLE_DEVICES={visible})")
        seen.setdefault(key, ident.get("rank"))
    if problems:
        return Check("device", FAIL, "; ".join(problems) + f" [{shown}]")
    return Check("device", PASS, shown)


def measure_allreduce(settings: Settings, local_rank: int) -> list[dict[str, float]]:
    """Time all_reduce(sum) of float32 buffers per size, nccl-tests style: the slowest rank's mean time,
    algbw = bytes / time, busbw = algbw * 2(n-1)/n (what each link carries in a ring all-reduce)."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    if world < 2:
        return []
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if on_gpu else torch.device("cpu")
    sizes = settings.sizes or (GPU_SIZES if on_gpu else CPU_SIZES)
    iters = settings.iters or (20 if on_gpu else 5)
    warmup = max(1, iters // 4)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    rows = []
    for size in sizes:
        buffer = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
        for _ in range(warmup):
            dist.all_reduce(buffer)
        sync()
        dist.barrier()
        tic = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buffer)
        sync()
        elapsed = torch.tensor([(time.perf_counter() - tic) / iters], dtype=torch.float64, device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        seconds = float(elapsed.item())
        nbytes = buffer.numel() * 4
        algbw = nbytes / seconds / 1e9
        rows.append({"bytes": nbytes, "time_us": seconds * 1e6, "algbw_GBps": algbw,
                     "busbw_GBps": algbw * 2 * (world - 1) / world})
        del buffer
    return rows


def bandwidth_check(rows: list[dict[str, float]], world_size: int, backend: str) -> Check:
    if world_size < 2:
        return Check("allreduce", SKIP, "1 rank: nothing to all-reduce")
    if not rows:
        return Check("allreduce", FAIL, "no measurement")
    best = max(rows, key=lambda r: r["busbw_GBps"])
    per_size = ", ".join(f"{format_bytes(r['bytes'])} {r['busbw_GBps']:.3g}" for r in rows)
    detail = (f"{backend}, {world_size} ranks: busbw {best['busbw_GBps']:.3g} GB/s "
              f"({best['busbw_GBps'] * 8:.3g} Gb/s) at {format_bytes(best['bytes'])}; busbw GB/s by size: {per_size}")
    verdict = PASS if best["busbw_GBps"] > 0 else FAIL
    return Check("allreduce", verdict, detail)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} GiB"
