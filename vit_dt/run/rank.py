"""What runs in every rank of a job: set up, train, record. `run_rank` is the one entry point for all launchers
(`vit-dt train`'s local ranks, srun tasks through submitit, MPI ranks)."""
from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
import random
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from vit_dt.config.schema import RootSchema
from vit_dt.run import distributed, heartbeat
from vit_dt.run.distributed import DistEnv

# A Slurm task imports this module before torch: OpenMP waits passively on CPU-only nodes (distributed.py).
distributed.quiet_openmp()

log = logging.getLogger("vit_dt.run.rank")
# a full file system, a read-only one, a quota, an I/O error: `failure_cause` calls these "io"
IO_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})
# what gloo and NCCL say when a peer rank died or stopped answering (lower case): `failure_cause` calls it "collective"
PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout",
             "nccl communicator was aborted")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def configure_logging(rank: int) -> None:
    """Rank 0 talks; the others only warn (the paper's tqdm on every rank made multi-MB .err files)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout, force=True,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    # submitit configures its own logger with its own stdout handler; propagating to the root handler above too
    # printed every submitit line twice in a job's log.
    submitit_log = logging.getLogger("submitit")
    if submitit_log.handlers:
        submitit_log.propagate = False


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _threads_per_rank(env: DistEnv) -> int:
    """CPU threads for this rank: what Slurm gave the task, else this machine's cores shared by its ranks.

    More threads than cores is catastrophic for CPU training (OpenMP threads spin while they wait): 10x slower
    was measured here with two 2-thread processes on 2 cores.
    """
    import torch

    given = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS")
    ranks_here = max(1, env.world_size // max(1, env.nodes))
    threads = int(given) if given else max(1, len(os.sched_getaffinity(0)) // ranks_here)
    torch.set_num_threads(max(1, threads))
    return threads


def loader_workers(configured: int | None, environ: Mapping[str, str]) -> int:
    """DataLoader workers per rank: `trainer.num_workers`, else the task's Slurm CPUs (the profile's
    cpus_per_task, sbatch's --cpus-per-task) less the one the training loop runs on."""
    if configured is not None:
        return int(configured)
    return max(0, int(environ.get("SLURM_CPUS_PER_TASK") or 1) - 1)


def run_rank(cfg: dict[str, Any], run_dir: str | os.PathLike) -> dict | None:
    """Train one rank of the run described by the resolved config `cfg`; rank 0 returns and records the result."""
    from vit_dt.config.typed import typed_config

    run_dir = Path(run_dir)
    config = typed_config(cfg)   # once: each component gets its own typed part; the plain dict is kept as data
    env = distributed.discover(config.cluster.launcher)
    configure_logging(env.rank)
    distributed.prepare_accelerator_env()
    started = _now()
    progress: dict[str, Any] = {}        # _train puts its recorder here: a failure keeps the epochs it measured
    attempt = heartbeat.attempt_id(env.master_addr, env.master_port)
    heartbeat.start(run_dir, env.rank, config.trainer.dist_timeout_s, attempt)
    try:
        heartbeat.phase("start-up: rendezvous")
        distributed.init_process_group(env, timeout_s=config.trainer.dist_timeout_s)
        result = _train(cfg, config, run_dir, env, started, progress)
    except Exception as exc:  # record the failure, then let the job fail (SystemExit on requeue is no failure)
        recorder = progress.get("recorder")
        _record_failure(cfg, run_dir, env, started, exc, recorder.epochs if recorder else [], attempt)
        raise
    finally:
        heartbeat.stop()
        distributed.destroy_process_group()
    return result if env.is_main else None


def _device(env: DistEnv):
    import torch

    if distributed.use_cuda():
        index = env.local_rank % torch.cuda.device_count()  # Slurm may show each task only its own GPU
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _train(cfg: dict, config: RootSchema, run_dir: Path, env: DistEnv, started: str,
           progress: dict[str, Any]) -> dict | None:
    """`config`: the typed config every component reads; `cfg`: the same as plain data, for the record."""
    from vit_dt.config.batch import resolve_batch
    from vit_dt.config.batch import steps_per_epoch as batch_steps_per_epoch  # the local name is taken below
    from vit_dt.config.ds_config import bf16_mode_for, derive_deepspeed_config
    from vit_dt.data.build import build_datasets
    from vit_dt.engines import DDPEngine, DeepSpeedEngine
    from vit_dt.models.vit import build_model
    from vit_dt.optim.optimizers import OptimizerSpec
    from vit_dt.run.checkpoint import Checkpointer
    from vit_dt.run.loop import LoopSettings, Trainer, TrainState
    from vit_dt.run.record import RunRecorder

    _threads_per_rank(env)
    trainer = config.trainer
    seed = trainer.seed
    device = _device(env)
    batch = resolve_batch(trainer, config.scaling, env.world_size)
    heartbeat.phase("start-up: loading the dataset")
    train_set, val_set, info = build_datasets(config.dataset, scaling_cfg=config.scaling,
                                              world_size=env.world_size, seed=seed)
    seed_everything(seed)  # same initial weights on every rank (the engines broadcast rank 0's anyway)
    model = build_model(config.model, info.num_classes)
    settings = LoopSettings(
        epochs=trainer.epochs, batch=batch, seed=seed, timer_sample_every=trainer.timer_sample_every,
        timer_warmup_steps=trainer.timer_warmup_steps, log_every=trainer.log_every,
        max_steps_per_epoch=trainer.max_steps_per_epoch, balance=trainer.balance)
    debug = config.debug    # None unless a test asked for it (debug=slow_rank)
    _slow_down_on_purpose(model, _debug_delay(debug and debug.delay_s, env.rank),
                          _debug_delay(debug and debug.delay_per_sample_s, env.rank))
    steps_per_epoch = max(1, batch_steps_per_epoch(info.train_samples, batch.world_size, batch.micro, batch.grad_accum,
                                                   max_steps=trainer.max_steps_per_epoch))
    schedule = {"warmup_steps": int(trainer.warmup_epochs * steps_per_epoch),
                "total_steps": steps_per_epoch * settings.epochs, "schedule": trainer.lr_schedule}
    optimizer = OptimizerSpec.from_config(config.optimizer, batch.global_)  # lr scaled for this global batch
    bf16_mode = bf16_mode_for(config)
    master_weights = config.precision == "bf16" and bf16_mode == "master"
    heartbeat.phase(f"start-up: building the {config.engine} engine")
    if config.engine == "deepspeed":
        ds_config = derive_deepspeed_config(
            batch=batch, precision=config.precision, zero_stage=config.deepspeed.zero_stage,
            grad_clip=trainer.grad_clip, wall_clock_breakdown=config.deepspeed.wall_clock_breakdown,
            overrides=config.deepspeed.overrides, bf16_mode=bf16_mode or "auto")
        engine = DeepSpeedEngine(model, ds_config, trainer, device, schedule, optimizer,
                                 master_weights=master_weights)
    else:
        ds_config = None
        engine = DDPEngine(model, trainer, device, config.precision, schedule, batch.grad_accum, optimizer,
                           master_weights=master_weights)
    seed_everything(seed + 1000 * env.rank)  # augmentation differs per rank, reproducibly

    recorder = RunRecorder(cfg, run_dir, env, device, batch, info, model, started, ds_config=ds_config,
                           config=config)
    progress["recorder"] = recorder
    recorder.watch_memory(engine)
    num_workers = loader_workers(trainer.num_workers, os.environ)
    checkpointer = Checkpointer(run_dir) if trainer.checkpoint else None
    state = TrainState()
    if checkpointer and (resumed := checkpointer.load_latest(engine, TrainState)):
        state = resumed[0]
        recorder.resumed_from(state)    # W&B: the same run, its rows after the checkpoint's global step

    def on_epoch_end(train_state: TrainState, record: dict) -> None:
        heartbeat.phase(f"epoch {record['epoch']}: recording and checkpointing")
        recorder.on_epoch_end(train_state, record)
        if checkpointer:
            checkpointer.save(engine, train_state)

    # synthetic data has no hflip key: random images need no flips
    meter = _energy_meter(device, env)
    loop = Trainer(engine, train_set, val_set, info, config.model.image_size,
                   getattr(config.dataset, "hflip", True), settings, env, device,
                   num_workers=int(num_workers), on_epoch_end=on_epoch_end, on_step=recorder.on_step, energy=meter)
    try:
        state = loop.fit(state)
    finally:
        meter.close()
    heartbeat.phase("finishing: the run's record")
    return recorder.finish(state, engine.module)


def _energy_meter(device, env: DistEnv):
    """This rank's GPU counter (found by UUID: CUDA and NVML number devices differently under CUDA_VISIBLE_DEVICES)
    and, on each host's first rank only, the CPU packages' RAPL counter (one per host: every rank would count it)."""
    import torch

    from vit_dt.measure.energy import EnergyMeter

    uuid = index = None
    if device.type == "cuda":
        uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", "") or "") or None
        index = device.index
    return EnergyMeter.open(gpu_uuid=uuid, gpu_index=index, read_cpu=env.local_rank == 0)


def _slow_down_on_purpose(model, delay_s: float, per_sample_s: float = 0.0) -> None:
    """Inside the forward pass, so it shows up as this rank's compute time, as a slower GPU would. Prepended so it
    runs before DeepSpeed's own forward hook stops the fwd timer, whenever the engine registers it.

    `delay_s` per forward; `per_sample_s` per image of the batch, which a smaller micro-batch shortens (as on a
    slower GPU): what `trainer.balance=speed` can even out, a fixed delay it cannot."""
    if delay_s > 0 or per_sample_s > 0:
        import time

        def sleep(_module, inputs, _output):
            time.sleep(delay_s + per_sample_s * (len(inputs[0]) if inputs else 0))

        model.register_forward_hook(sleep, prepend=True)


def _debug_delay(delays: Mapping[Any, float] | None, rank: int) -> float:
    """This rank's entry of debug.delay_s = {rank: seconds} (per forward) or debug.delay_per_sample_s = {rank:
    seconds per image} (conf/debug/slow_rank.yaml): test-only knobs that slow one rank on purpose. Ranks not
    named are not slowed; the keys may be ints or strings (as YAML or the command line wrote them)."""
    delays = delays or {}
    return float(delays.get(rank, delays.get(str(rank), 0.0)))


def failure_cause(exc: BaseException) -> str:
    """What kind of failure `exc` is (records/result.py FAILURE_CAUSES): `io` for a full, read-only or over-quota
    file system and other I/O errors (retrying elsewhere or after cleaning up may help), `collective` when a peer
    rank stopped answering (a dead or stuck rank, a network), `hang` when a start-up lock's holder stopped, `error`
    for the rest (the run's own: retrying will not help)."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    if any(isinstance(e, OSError) and e.errno in IO_ERRNOS for e in chain):
        return "io"
    from vit_dt.engines.deepspeed_ops import OpLockTimeout

    if any(isinstance(e, OpLockTimeout) for e in chain):
        return "hang"
    names = {type(e).__name__ for e in chain}
    if names & {"DistBackendError", "DistNetworkError"} or any(
            isinstance(e, RuntimeError) and any(s in str(e).lower() for s in PEER_LOST) for e in chain):
        return "collective"
    return "error"


def one_line(exc: BaseException, limit: int = 500) -> str:
    """`Type: message`, its lines joined (a DatasetError's `fix:` line stays), at most `limit` characters: what status
    and the store show (the whole traceback stays in error-rank<R>.txt)."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


NAMERS_OF_SILENT_RANKS = (0, 1)


def _record_failure(cfg: dict, run_dir: Path, env: DistEnv, started: str, exc: BaseException,
                    epochs: list[dict], attempt: str) -> None:
    """Each rank leaves its traceback; ranks 0 and 1 end theirs with the ranks that went silent when peers stopped
    answering (the stopped one may be rank 0, then rank 1 names it); rank 0 also writes a failed result.json,
    with the epochs measured so far, the failure's cause and the silent ranks, and appends it to the store."""
    cause = failure_cause(exc)
    # Ranks 0 and 1 name the silent ones: rank 0 for its record, rank 1 for when rank 0 is the silent one. Not every
    # rank: each would read every rank's beat file, world_size squared reads on a shared file system at once.
    names_silent = cause in ("collective", "hang") and env.rank in NAMERS_OF_SILENT_RANKS
    silent = heartbeat.silent_ranks(run_dir, env.world_size, attempt, skip=env.rank) if names_silent else []
    error = one_line(exc)
    if silent:      # first: what status shows of a long line is its start
        error = "; ".join(s.describe() for s in silent) + ": " + error
    tail = "".join(traceback.format_exception(exc))[-4000:] + (f"{error}\n" if silent else "")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"error-rank{env.rank}.txt").write_text(tail)
    except OSError:     # a full or read-only file system: the record below may still reach the store
        log.exception("could not write the traceback of rank %d", env.rank)
    if not env.is_main:
        return
    try:
        from vit_dt.records.result import write_result
        from vit_dt.run.record import failed_result, store_for

        result = failed_result(cfg, run_dir, env, started, _now(), error, cause, epochs,
                               silent_ranks=[s.as_record() for s in silent])
        try:
            write_result(run_dir, result)
        finally:
            store_for(cfg).append(result)     # the sweep's store may sit on another file system than the run
    except Exception:  # the original error matters more than a failure to record it
        log.exception("could not record the failure of rank %d", env.rank)


class Stopped(BaseException):
    """SIGTERM from `vit-dt train`'s launcher (Ctrl-C, or a peer rank failed). A BaseException: no `except
    Exception` records it as the run's failure; the stack unwinds, so `finally` blocks still run (a DeepSpeed op
    build interrupted by SIGTERM's default action would leave its lock file, and every later run would wait on it
    forever)."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def run_stoppable(work: Callable[[], Any]) -> None:
    """Runs `work` with SIGTERM raising Stopped inside it; a stopped process unwinds, then leaves with status
    128 + SIGTERM and no traceback, skipping the interpreter's teardown (W&B's atexit finishing an interrupted run,
    gloo's threads): the launcher has already said why the run ended."""
    import signal

    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        work()
    except Stopped:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(128 + signal.SIGTERM)


def main() -> int:
    """`python -m vit_dt.run.rank RUN_DIR`: one rank of a run whose resolved config is RUN_DIR/config.yaml."""
    from omegaconf import OmegaConf

    run_dir = Path(sys.argv[1])
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    run_stoppable(lambda: run_rank(cfg, run_dir))
    distributed.exit_without_teardown_after_success()
    return 0


if __name__ == "__main__":
    sys.exit(main())
