"""Command-line options of the Hydra-override commands (`vit-dt train`, `vit-dt sweep`): everything that is not
one of a command's few options is a Hydra override `key=value`, so a stray `--flag` is refused up front with
the valid options instead of reaching Hydra's override parser (whose error is a lexer exception)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def unknown_options(args: Sequence[str], valid: Iterable[str]) -> list[str]:
    """The arguments that look like options (`-x`, `--flag`, `--flag=value`) but are none of `valid`. A Hydra
    override never starts with `-` (its prefixes are `+`, `++` and `~`)."""
    valid = set(valid)
    return [a for a in args if a.startswith("-") and a.split("=", 1)[0] not in valid]


def unknown_options_message(command: str, unknown: Sequence[str], valid: Iterable[str], example: str = "") -> str:
    """One line naming the unknown options and the valid ones, e.g.
    `vit-dt train: unknown option(s) ['--epochs']; valid: -h, --help (everything else is a Hydra override, ...)`."""
    hint = f", e.g. {example}" if example else ""
    return (f"vit-dt {command}: unknown option(s) {list(unknown)}; valid: {', '.join(valid)} "
            f"(everything else is a Hydra override, key=value{hint})")
