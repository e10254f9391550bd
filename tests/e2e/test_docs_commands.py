"""Every `vit-dt ...` command in the fenced shell blocks of README.md, docs/quickstart.md, docs/sweeps.md,
docs/paper-reproduction.md and the study pages (docs/studies/*.md) runs as written and does what its text says.

How each command is checked (`plan`, one decision per command; a command no rule covers fails the test, so a new
documented command needs a rule here):
- `vit-dt sweep` on any profile: `--dry-run` (and `--no-verify-data`: the data roots of the docs are not on this
  machine). Nothing is queued; every point is composed and validated, its shape rendered. The rendered shapes must
  be what the command promises: one shape per value of the swept `resources.*` keys (a swept resource that renders
  one shape is a silent no-op), world sizes equal to `resources.gpus`, every point of the cartesian product, and
  a comment's "N shapes" / "N points".
- `vit-dt sweep ... --cfg job`: one YAML document per point ("N configs" when the comment says so).
- `$ vit-dt ...` transcripts (a command, then the output the page shows): run; the output shown must appear
  (`...` stands for anything).
- `vit-dt train ...`: `--cfg job` (it composes: every key and group exists); README's own first run for real below.
- README's local-Slurm block, for real on the local cluster (`slurm` marker), then README's `vit-dt status`,
  `results`, `report` and `predict` without a directory, on that sweep.
- Commands that need what this machine cannot have (network, an earlier real sweep on a remote cluster, a path
  the page makes up) are listed in SKIPPED with the reason.
Real runs are shrunk with `trainer.max_steps_per_epoch` (said where it is added); the docs' own values stay.
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from tests.helpers import REPO, read_result, run_cli, run_cli_here, run_dir_from_output

PAGES = ["README.md", "docs/quickstart.md", "docs/sweeps.md", "docs/paper-reproduction.md",
         *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs" / "studies").glob("*.md"))]
RESOURCE_KEYS = ("resources.gpus", "resources.nodes", "resources.gpus_per_node", "resources.layout",
                 "resources.partition")

# (page, the command's start) -> why it is not run here
SKIPPED = {
    "vit-dt data prepare": "downloads a dataset (network)",
    "vit-dt sync": "uploads W&B runs (network)",
    "vit-dt cluster": "the local cluster is started by the slurm_cluster fixture",
    "eval \"$(vit-dt cluster up)\"": "the local cluster is started by the slurm_cluster fixture",
    "vit-dt predict --from outputs/sweeps/<": "needs an earlier real sweep on the Vaughan cluster",
    "vit-dt sweep cluster=vaughan resources.gpus=1,2,4,8 resources.time_min=auto --calibrate-from outputs/sweeps/<":
        "needs an earlier real sweep to calibrate from (tests/unit/commands/test_sweep_cost.py calibrates a dry run)",
    "vit-dt report SWEEP_": "needs the paper's three real sweeps on the Vaughan cluster",
    "vit-dt report outputs/": "reads a real sweep made by the command above it (run by that study's e2e test)",
    "vit-dt status outputs/": "reads a real sweep made by the command above it, or a path the page makes up",
    "vit-dt sweep --resume outputs/sweeps/2025": "a path the page makes up",
    "vit-dt sweep <the same overrides>": "a template, not a command",
}


@dataclass
class Command:
    page: str
    argv: list[str]              # after `vit-dt`
    comment: str                 # the text after `#` on its line
    transcript: list[str] = field(default_factory=list)   # output lines shown under a `$ ` command

    def __str__(self) -> str:
        return f"{self.page}: vit-dt {shlex.join(self.argv)}"


def _blocks(text: str):
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield match.group(1), match.group(2)


def _comment(line: str) -> tuple[str, str]:
    """(the command, its trailing `# comment`), a `#` inside quotes or `$(...)` left alone."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def extract(page: str) -> tuple[list[Command], list[tuple[str, str]]]:
    """The page's vit-dt commands, and (line, reason) for the ones SKIPPED."""
    commands, skipped = [], []
    previous_sweep: list[str] | None = None
    variables: dict[str, str] = {}
    for lang, body in _blocks((REPO / page).read_text()):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        body = re.sub(r"\\\n\s*", " ", body)          # continuation lines
        variables.update({m.group(1): " ".join(m.group(2).split())     # PAPER="..." holds for the page
                          for m in re.finditer(r'^(\w+)="(.*?)"', body, re.S | re.M)})
        lines = body.splitlines()
        for number, raw in enumerate(lines):
            transcript = raw.startswith("$ ")
            if lang == "" and not transcript:
                continue           # output shown on the page, not a command
            line, comment = _comment(raw[2:] if transcript else raw)
            line = line.strip()
            reason = next((why for start, why in SKIPPED.items() if line.startswith(start)), None)
            if reason:
                skipped.append((line, reason))
                continue
            if not line.startswith("vit-dt "):
                continue           # another tool's command (git, make, export, a variable)
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            argv = shlex.split(line)
            assert argv[0] == "vit-dt", f"{page}: a command not run as `vit-dt ...`: {raw!r}"
            argv = argv[1:]
            if "..." in argv:              # `vit-dt sweep ... --dry-run`: the sweep command above, with more
                assert previous_sweep, f"{page}: `...` with no sweep command before it: {raw!r}"
                at = argv.index("...")
                given = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
                kept = [a for a in previous_sweep if a.split("=", 1)[0].lstrip("+~") not in given]
                argv = argv[:at] + kept + argv[at + 1:]
            elif argv[:1] == ["sweep"]:
                previous_sweep = argv[1:]
            shown = []
            if transcript:
                shown = [out for out in lines[number + 1:] if out.strip()]
                shown = shown[:next((i for i, out in enumerate(shown) if out.startswith("$ ")), len(shown))]
            commands.append(Command(page, argv, comment, shown))
    return commands, skipped


def _sweep_sizes(overrides: list[str]) -> dict[str, int]:
    """{key: how many values} for each swept override (a top-level comma list)."""
    sizes = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or override.startswith("-"):
            continue
        depth, parts = 0, 1
        for char in value:
            depth += char in "[{(" and 1 or (char in "]})" and -1 or 0)
            parts += char == "," and depth == 0
        if parts > 1:
            sizes[key.lstrip("+~")] = parts
    return sizes


def _promised(comment: str, noun: str) -> int | None:
    found = re.search(rf"\b(\d+) {noun}", comment)
    return int(found.group(1)) if found else None


_SLURM_LINE = re.compile(r"(\d+) node\(s\) x (\d+) rank\(s\), partition \S+, \d+ min, points ([\d,-]+)")
_LOCAL_LINE = re.compile(r"point\(s\) ([\d,-]+) \((\d+) node\(s\) x (\d+) rank\(s\)\)")


def _indexes(ranges: str) -> list[int]:
    """"0-3,7" -> [0, 1, 2, 3, 7] (vit_dt.textable.index_ranges printed them)."""
    out = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def rendered_shapes(stdout: str) -> dict[int, tuple[int, int]]:
    """{point: (nodes, ranks per node)} from what `vit-dt sweep --dry-run` printed."""
    shapes = {}
    for nodes, ranks, points in _SLURM_LINE.findall(stdout):
        shapes.update({p: (int(nodes), int(ranks)) for p in _indexes(points)})
    for points, nodes, ranks in _LOCAL_LINE.findall(stdout):
        shapes.update({p: (int(nodes), int(ranks)) for p in _indexes(points)})
    return shapes


def check_sweep_dry_run(command: Command, tmp_path: Path) -> None:
    overrides = [a for a in command.argv[1:] if a not in ("--dry-run", "-m", "--multirun")]
    proc = run_cli_here("sweep", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}", "--no-verify-data", "--dry-run")
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    shapes = rendered_shapes(proc.stdout)
    sizes = _sweep_sizes(overrides)
    assert sorted(shapes) == list(range(math.prod(sizes.values()))), f"{command}: points {sorted(shapes)}"
    want_shapes = math.prod(n for key, n in sizes.items() if key in RESOURCE_KEYS)
    assert len(set(shapes.values())) == want_shapes, (
        f"{command}: {want_shapes} shape(s) promised by the swept resources, rendered {sorted(set(shapes.values()))}")
    gpus = next((a.split("=", 1)[1] for a in overrides if a.startswith("resources.gpus=")), None)
    if gpus is not None:
        assert {n * r for n, r in shapes.values()} == {int(g) for g in gpus.split(",")}, f"{command}: {shapes}"
    for noun, count in (("shapes", len(set(shapes.values()))), ("points", len(shapes))):
        promised = _promised(command.comment, noun)
        assert promised in (None, count), f"{command}: the text says {promised} {noun}, rendered {count}"


def check_sweep_cfg(command: Command, tmp_path: Path) -> None:
    proc = run_cli_here(*command.argv, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    documents = list(yaml.safe_load_all(proc.stdout))
    sizes = _sweep_sizes([a for a in command.argv[1:] if not a.startswith("-")])
    assert len(documents) == math.prod(sizes.values()), command
    assert _promised(command.comment, "configs") in (None, len(documents)), command
    assert not (tmp_path / "sweep").exists(), f"{command}: --cfg wrote a sweep directory"


def check_transcript(command: Command, tmp_path: Path) -> None:
    proc = run_cli(*command.argv, f"out_dir={tmp_path}")
    output = proc.stdout + proc.stderr
    if any(shown.startswith(f"vit-dt {command.argv[0]}: ") for shown in command.transcript):
        assert proc.returncode == 2, f"{command}: the page shows a refusal; exit status {proc.returncode}"
    for shown in command.transcript:
        pattern = ".*?".join(re.escape(part.strip()) for part in shown.split("..."))
        assert re.search(pattern, output), f"{command}: the page shows {shown!r}; it printed:\n{output[-2000:]}"


def plan(command: Command) -> str:
    """Which check a command gets (see the module docstring)."""
    name = command.argv[0] if command.argv else ""
    if command.transcript:
        return "transcript"
    if name == "sweep" and "--help" in command.argv:
        return "help"
    if name == "sweep" and ("--cfg" in command.argv or "-c" in command.argv):
        return "sweep-cfg"
    if name == "sweep":
        return "sweep-dry-run"
    if name == "train":
        return "train-cfg"
    if command.page == "README.md" and name in ("status", "results", "report", "predict") \
            and not any(a.startswith("outputs/") for a in command.argv):
        return "after-readme-slurm-sweep"
    raise AssertionError(f"{command}: no check for this documented command; add a rule to plan() or SKIPPED")


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in extract(page)[0]]


def test_every_documented_command_has_a_check():
    commands = all_commands()
    plans = {str(c): plan(c) for c in commands}
    pages = {c.page for c in commands}
    assert {"README.md", "docs/quickstart.md"} <= pages
    # what the issue is about: the quickstart's 4-shape study and README's paper command are dry-run here
    assert any(p == "sweep-dry-run" and "resources.gpus=1,2,4,8" in c and c.startswith("docs/quickstart.md")
               for c, p in plans.items())
    assert any(p == "sweep-dry-run" and "resources.time_min=240" in c and c.startswith("README.md")
               for c, p in plans.items())
    skipped = [s for page in PAGES for s in extract(page)[1]]
    assert all(reason for _, reason in skipped)


FAST = [c for c in all_commands() if plan(c) in ("sweep-dry-run", "sweep-cfg", "transcript", "train-cfg", "help")]


@pytest.mark.parametrize("command", FAST, ids=[f"{c.page}:{i}" for i, c in enumerate(FAST)])
def test_documented_command(command, tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_DT_OUT_DIR", str(tmp_path / "out"))
    kind = plan(command)
    if kind == "sweep-dry-run":
        check_sweep_dry_run(command, tmp_path)
    elif kind == "sweep-cfg":
        check_sweep_cfg(command, tmp_path)
    elif kind == "transcript":
        check_transcript(command, tmp_path)
    elif kind == "train-cfg":
        proc = run_cli_here(*command.argv, "--cfg", "job")
        assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["trainer"], f"{command}\n{proc.stderr}"
    else:
        proc = run_cli_here(*command.argv)
        assert proc.returncode == 0 and "== Configuration groups ==" in proc.stdout, command


def test_the_checks_catch_a_silent_no_op(tmp_path):
    """The dry-run check fails on what it exists for: a swept resource key that renders one shape (here two
    layouts of 1 GPU, both 1x1), and a comment promising more shapes than are rendered."""
    no_op = Command("test", ["sweep", "cluster=vaughan", "resources.layout=intra,inter", "resources.gpus=1"], "")
    with pytest.raises(AssertionError, match="2 shape.*promised by the swept resources"):
        check_sweep_dry_run(no_op, tmp_path / "a")
    overpromised = Command("test", ["sweep", "cluster=vaughan", "resources.gpus=1,2"], "3 shapes")
    with pytest.raises(AssertionError, match="the text says 3 shapes, rendered 2"):
        check_sweep_dry_run(overpromised, tmp_path / "b")


@pytest.mark.slow
def test_readme_first_run(tmp_path):
    """README's first `vit-dt train` command, shrunk to 2 steps per epoch (trainer.max_steps_per_epoch=2 added):
    two local ranks, completed, every epoch the command asks for."""
    command = next(c for c in extract("README.md")[0] if c.argv[:1] == ["train"] and not c.transcript)
    proc = run_cli(*command.argv, "trainer.max_steps_per_epoch=2", "wandb.mode=disabled", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(run_dir_from_output(proc.stdout))
    assert result["status"] == "completed" and result["world_size"] == 2
    from vit_dt.config import compose

    epochs = compose([a for a in command.argv[1:] if "=" in a])["trainer"]["epochs"]    # as written, or the default
    assert len(result["epochs"]) == epochs


@pytest.mark.slurm
@pytest.mark.slow
def test_readme_local_slurm_block(slurm_cluster, tmp_path, monkeypatch):
    """README's `vit-dt sweep cluster=localslurm resources.nodes=1,2 trainer.epochs=2` for real (each epoch shrunk to
    2 steps: trainer.max_steps_per_epoch=2 added), then its `vit-dt status`, `results --csv runs.csv`, `report` and
    `predict ...` with no directory: they use that sweep, the latest."""
    monkeypatch.setenv("VIT_DT_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    readme = extract("README.md")[0]
    sweep = next(c for c in readme if c.argv[:1] == ["sweep"] and "cluster=localslurm" in c.argv)
    sweep_dir = tmp_path / "out" / "sweeps" / "readme"
    submitted = run_sweep_cli(sweep_dir, *sweep.argv[1:], "trainer.max_steps_per_epoch=2", "wandb.mode=disabled")
    assert submitted.proc.returncode == 0, submitted.proc.stderr
    rows = wait_until_done(sweep_dir)
    assert [r.state for r in rows] == ["completed", "completed"], rows
    shapes = {(p["shape"]["nodes"], p["shape"]["tasks_per_node"]) for p in yaml.safe_load(
        (sweep_dir / "sweep.json").read_text())["points"]}
    assert shapes == {(1, 1), (2, 1)}
    for command in (c for c in readme if plan(c) == "after-readme-slurm-sweep"):
        proc = run_cli(*command.argv, cwd=tmp_path, env={"VIT_DT_OUT_DIR": str(tmp_path / "out")})
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        assert f"using the latest sweep: {sweep_dir.resolve()}" in proc.stderr, command
    assert (tmp_path / "runs.csv").is_file()
