"""The layout's promises, checked from the code itself: the login side imports without torch, a multi-shape sweep is
validated and rendered in a process where importing torch raises, no module imports another in a circle, and
each wing imports only the wings docs/design.md allows it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "vit_dt"
PLUGIN = REPO / "launchers" / "hydra_plugins"

# What runs on a login node (or a laptop): configuration, orchestration, records, analysis, the CLI. None of it may
# import torch, torchvision or deepspeed when imported: a login node may not have them, and a sweep of 500 points
# must validate in seconds.
LOGIN_WINGS = ("config", "slurm", "records", "analysis", "commands", "localcluster")
LOGIN_MODULES_ELSEWHERE = ("vit_dt.cli", "vit_dt.paths", "vit_dt.models.catalog", "vit_dt.data.verify",
                           "vit_dt.data.errors", "vit_dt.atomic", "vit_dt.textable")

# Which wing may import which at module level (docs/design.md, "Who may import whom"). The rank side (run) wires
# everything below it; the login side never reaches into the rank side's torch code.
ALLOWED = {
    "config": set(),                                        # the bottom: validate borrows checks inside functions
    "slurm": {"config", "records", "data"},                 # data.verify: the login-side dataset check
    "records": {"config"},
    "analysis": {"config", "records", "measure"},           # measure.hardware / metrics: pure functions
    "commands": {"config", "slurm", "records", "analysis", "localcluster", "data", "run", "measure"},
    "localcluster": set(),
    "models": {"config"},
    "optim": {"config"},
    "measure": {"config", "models"},
    "data": {"config"},
    "engines": {"config", "measure", "optim", "models"},
    "run": {"config", "data", "engines", "measure", "models", "optim", "records", "slurm"},
}
TORCH_BLOCKER = 'import sys\nfor _m in ("torch", "torchvision", "deepspeed"):\n    sys.modules[_m] = None\n'


def _torch_free_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(TORCH_BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), str(REPO / "launchers")])}


def _module_name(path: Path) -> str:
    base = REPO / "launchers" if path.is_relative_to(PLUGIN) else REPO
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    files = [p for p in PACKAGE.rglob("*.py")] + [p for p in PLUGIN.rglob("*.py")]
    return {_module_name(p): p for p in files}


def login_side_modules() -> list[str]:
    names = [n for n in _all_modules() if n.split(".")[1:2] and n.split(".")[1] in LOGIN_WINGS]
    names += [n for n in _all_modules() if n.startswith("hydra_plugins.")]
    return sorted(names) + list(LOGIN_MODULES_ELSEWHERE)


def test_every_login_side_module_imports_with_torch_unimportable(tmp_path):
    modules = login_side_modules()
    assert "vit_dt.slurm.submit" in modules and "hydra_plugins.vit_dt_launcher.launcher" in modules
    script = ("import importlib, sys\nbad = []\n"
              f"for name in {modules!r}:\n"
              "    try:\n        importlib.import_module(name)\n"
              "    except ImportError as exc:\n        bad.append(f'{name}: {exc}')\n"
              "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=_torch_free_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, f"login-side modules that import torch:\n{proc.stdout}{proc.stderr}"


def test_the_blocker_really_blocks_torch(tmp_path):
    """The test above proves something only if importing torch fails in its processes."""
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, timeout=60,
                          env=_torch_free_env(tmp_path))
    assert proc.returncode != 0 and "torch" in proc.stderr


def test_a_four_shape_dry_run_sweep_needs_no_torch(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=vaughan", "dataset=synthetic", "model=vit_b_16",
         "scaling=strong", "resources.layout=intra", "resources.gpus=1,2,4,8", "trainer.epochs=1", "--dry-run",
         f"out_dir={out}"],
        capture_output=True, text=True, timeout=300, env=_torch_free_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scripts = sorted(out.glob("sweeps/*/dry-run/*.sbatch"))
    ranks = sorted(int(next(line for line in s.read_text().splitlines() if "--ntasks-per-node=" in line)
                       .split("=")[1]) for s in scripts)
    assert ranks == [1, 2, 4, 8]


def _imports(path: Path, module: str, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """The project modules `module` imports (the module itself when a name is a submodule)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in map(owner, targets) if t and t != module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_in_a_circle():
    """Function-level imports count too: a circle that only closes at run time still ties two modules together."""
    modules = _all_modules()
    graph = {m: _imports(p, m, modules, top_level_only=False) for m, p in modules.items()}
    assert _cycles(graph) == []


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "vit_dt" and len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) \
        else None


def test_each_wing_imports_only_the_wings_it_may():
    modules = _all_modules()
    wrong = defaultdict(set)
    for module, path in modules.items():
        wing = _wing(module)
        if wing is None or wing not in ALLOWED:
            continue
        for target in _imports(path, module, modules, top_level_only=True):
            other = _wing(target)
            if other and other != wing and other not in ALLOWED[wing]:
                wrong[module].add(target)
    assert not wrong, "imports that cross the wings' rules (docs/design.md):\n" + "\n".join(
        f"  {m} -> {', '.join(sorted(t))}" for m, t in sorted(wrong.items()))


MODULE_LINES = 400   # "about 400": a module that grows past it does more than one thing


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _all_modules().values()
            if (n := len(p.read_text().splitlines())) > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines (split them by job): {long}"
