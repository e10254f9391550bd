"""`vit-dt <command> ...`: each command lives in vit_dt/commands/<command>.py and exposes main(argv) -> int."""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": "one training run here (trainer.nproc=N local ranks)",
    "sweep": "a Hydra multirun submitted as Slurm jobs, one job array per resource shape",
    "status": "each point of a sweep: Slurm state, result, logs",
    "rerun": "run one recorded point again here, with its recorded code snapshot and config",
    "results": "a sweep's results store as a table or CSV",
    "report": "scaling report (tables + plots) from a sweep's results store",
    "compare": "two sweeps of the same points: ratio, interval and verdict per point (exit 1 on a regression)",
    "predict": "scaling model: predicted epoch time, speed-up and efficiency for N GPUs",
    "preflight": "short checks of a cluster shape before a big sweep",
    "sync": "upload a sweep's offline W&B runs (from a login node)",
    "data": "prepare or verify datasets",
    "cluster": "start, stop or inspect the local Slurm cluster",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vit-dt <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "vit-dt <command> --help: its options; train and sweep also list the config groups and their options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vit-dt: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"vit_dt.commands.{name}")
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C before or after a run (composing, checking data): one line, not a traceback. `vit-dt train`
        # says where its run directory is itself.
        print(f"vit-dt {name}: interrupted", file=sys.stderr, flush=True)
        return 128 + 2
    except BrokenPipeError:
        # The reader left (`vit-dt status | head -n 1`): what it wanted was printed. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again, and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
