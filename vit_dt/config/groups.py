"""The config groups and their options, read from the conf/ tree itself (one source: a YAML file added under
conf/<group>/ is an option everywhere at once): `--help`'s "Configuration groups" section and the one-line refusal of
a wrong option (`cluster=vaugan`), which replaces Hydra's listing of its search path."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from vit_dt.paths import conf_dir


def group_options(conf: Path | None = None) -> dict[str, list[str]]:
    """{group: sorted option names} for every sub-directory of conf/ holding YAML files."""
    conf = conf or conf_dir()
    groups = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(conf.iterdir()) if d.is_dir()}
    return {group: options for group, options in groups.items() if options}


def default_options(conf: Path | None = None) -> dict[str, str | None]:
    """{group: the option conf/config.yaml's defaults list picks (None for `group: null`)}."""
    import yaml

    root = yaml.safe_load(((conf or conf_dir()) / "config.yaml").read_text()) or {}
    chosen: dict[str, str | None] = {}
    for entry in root.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                chosen[str(group).split("@")[0].lstrip("/")] = option
    return chosen


def groups_help() -> str:
    """Hydra's help section, with each group's default: `cluster: local, localslurm, ... (default: local)`."""
    defaults = default_options()
    lines = ["== Configuration groups ==", "Compose your configuration from those groups (group=option)", ""]
    for group, options in group_options().items():
        default = defaults.get(group)
        lines.append(f"{group}: {', '.join(options)} (default: {default if default is not None else 'none'})")
    return "\n".join(lines)


# Hydra's refusal of a missing group option: "In 'config': Could not find 'cluster/vaugan'" + the search path
_MISSING_OPTION = re.compile(r"Could not (?:find|load) '([\w/]+)/([^'/]+)'")


def unknown_option_message(text: str) -> str | None:
    """One line for Hydra's "Could not find 'cluster/vaugan'": the valid options and the nearest one; None when
    `text` is not about a conf/ group (e.g. a `hydra/...` group, whose message stays Hydra's)."""
    found = _MISSING_OPTION.search(text)
    options = group_options().get(found.group(1)) if found else None
    if not options:
        return None
    group, option = found.group(1), found.group(2)
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    return f"unknown {group} option {option!r}{hint}; valid: {', '.join(options)} (conf/{group}/)"
