"""Where vit-dt's own files live (config tree, sbatch templates), found from the package location."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The Hydra config tree; VIT_DT_CONF_DIR points elsewhere (a site-wide tree on a cluster)."""
    return Path(os.environ.get("VIT_DT_CONF_DIR", REPO_ROOT / "conf")).resolve()


def templates_dir() -> Path:
    return Path(os.environ.get("VIT_DT_TEMPLATES_DIR", REPO_ROOT / "slurm_templates")).resolve()


def torch_extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built C++ ops are cached: $TORCH_EXTENSIONS_DIR, else one vit-dt cache shared by the
    CLI, `make` and Slurm jobs (torch's own default differs per Python and CUDA build, so each would rebuild)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "vit-dt" / "torch_extensions")
