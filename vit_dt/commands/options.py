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


# --- Hydra's own habits: `--cfg job|hydra|all` (`-c`), `--resolve` -----------------------------------------------
CFG_OPTIONS = ("--cfg", "-c", "--resolve")
CFG_TYPES = ("job", "hydra", "all")


class OptionError(ValueError):
    """A malformed option (`--cfg` without a valid value): one line, exit status 2."""


def take_cfg_options(args: Sequence[str]) -> tuple[str | None, bool, list[str]]:
    """(`--cfg`'s value or None, `--resolve`, the other arguments). As in Hydra, `--cfg job|hydra|all` (also `-c job`,
    `--cfg=job`) prints the composed config instead of running, and `--resolve` resolves its interpolations;
    `--resolve` alone means `--cfg job --resolve`."""
    cfg_type, resolve, rest = None, False, []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg == "--resolve":
            resolve = True
        elif name in ("--cfg", "-c"):
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            if value not in CFG_TYPES:
                raise OptionError(f"{name} {value!r} is invalid; valid: {name} {'|'.join(CFG_TYPES)}")
            cfg_type = value
        else:
            rest.append(arg)
        i += 1
    if resolve and cfg_type is None:
        cfg_type = "job"
    return cfg_type, resolve, rest


def expand_overrides(args: list[str]) -> list[list[str]]:
    """Hydra's sweep syntax (a,b / range()) -> the cartesian product of plain overrides."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def config_text(overrides: list[str], cfg_type: str, resolve: bool) -> str:
    """The composed config as YAML (what `--cfg` prints): `job` without Hydra's node, `hydra` only that node, `all`
    both. Secrets are redacted as in every dump vit-dt writes (vit_dt/records/secrets.py)."""
    from omegaconf import OmegaConf

    from vit_dt.config import compose
    from vit_dt.records.secrets import scrub_secrets

    cfg = compose(overrides, with_hydra=cfg_type != "job")
    node = cfg.hydra if cfg_type == "hydra" else cfg
    container = _resolved(node) if resolve else OmegaConf.to_container(node, resolve=False)
    if cfg_type == "hydra":
        container = {"hydra": container}
    return OmegaConf.to_yaml(OmegaConf.create(scrub_secrets(container)))


def _resolved(node):
    """OmegaConf.to_container(node, resolve=True), except that a value that cannot be resolved outside a running
    job (Hydra's `hydra.job.num`, say) is shown as written instead of failing the whole print."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        pass
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    out = {} if isinstance(node, DictConfig) else []
    for key in keys:
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation():
            value = _resolved(child)
        else:
            try:
                value = node[key]
                value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except OmegaConfBaseException:
                value = child._value()
        if isinstance(out, dict):
            out[key] = value
        else:
            out.append(value)
    return out


def print_config(command: str, args: list[str], cfg_type: str, resolve: bool, sweep: bool = False) -> int:
    """`vit-dt train|sweep --cfg ...`: print, run nothing, queue nothing. A sweep prints every point's config, one
    YAML document each, headed by the point's overrides."""
    import sys

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vit_dt.config.compose import error_message

    try:
        points = expand_overrides(args) if sweep else [args]
        texts = [config_text(point, cfg_type, resolve) for point in points]
    except (ValueError, HydraException, OmegaConfBaseException) as exc:
        print(f"vit-dt {command}: error: {error_message(exc)}", file=sys.stderr)
        return 2
    if not sweep:
        print(texts[0], end="")
        return 0
    from vit_dt.records.secrets import scrub_override

    for index, (point, text) in enumerate(zip(points, texts)):
        shown = " ".join(scrub_override(o) for o in point) or "(no overrides)"
        print(f"---\n# point {index}: {shown}\n{text}", end="")
    return 0


# --- the sweep a reading command uses when given none ---------------------------------------------------------
def latest_sweep_or_report(command: str) -> str | None:
    """The latest sweep (<sweeps>/latest, else the newest), announced on stderr as the one used; None (and one line
    saying so) when there is none."""
    import sys

    from vit_dt.slurm.sweep_dir import latest_sweep, sweeps_root

    root = sweeps_root()
    found = latest_sweep(root)
    if found is None:
        print(f"vit-dt {command}: no sweep under {root} (run `vit-dt sweep ...` first, or name a sweep directory)",
              file=sys.stderr)
        return None
    print(f"vit-dt {command}: using the latest sweep: {found}", file=sys.stderr)
    return str(found)
