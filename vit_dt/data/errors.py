"""The one error type for data that is missing or unreadable on disk."""
from __future__ import annotations

import shlex
from pathlib import Path


class DatasetError(ValueError):
    """A dataset file or directory is missing, corrupt, or laid out wrongly.

    The message always names the path, what was expected there, and the command that fixes it,
    because the person reading it is usually looking at a failed Slurm job's log, not the code.
    """

    def __init__(self, path: str | Path, problem: str, fix: str | None = None) -> None:
        self.path = path  # a file, a directory, or a URL (kept as given: Path() would mangle "https://")
        self.problem = problem
        self.fix = fix
        message = f"{path}: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


def prepare_hint(name: str, root: str | Path) -> str:
    """The command line that (re)creates dataset `name` under `root`."""
    return f"vit-dt data prepare {name} --root {shlex.quote(str(root))}"
