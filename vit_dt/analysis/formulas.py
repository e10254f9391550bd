"""The scaling formulas: speed-up, efficiency and the ideal epoch time of a series, strong or weak. Pure functions.

A *series* is a set of completed runs that differ only in their world size (N ranks): same scaling mode,
layout, batch setting, precision, engine, model and dataset. Every number is relative to the series' baseline,
its SMALLEST world size N1 with mean epoch time T1 (TN: mean epoch time at N ranks, first epoch left out):

strong scaling (same data for every N; also scaling mode `none`, where every run sees the whole dataset):
    speed-up    S(N) = T1 / TN
    efficiency  E(N) = T1 * N1 / (TN * N)          = S(N) / (N / N1)
    ideal time       = T1 * N1 / N
weak scaling (data grows with N, the same amount per rank):
    speed-up    S(N) = (N / N1) * T1 / TN           (scaled speed-up: N/N1 times the work in TN)
    efficiency  E(N) = T1 / TN
    ideal time       = T1                           (flat)

docs/report.md explains each number and plot.
"""
from __future__ import annotations

KINDS = ("strong", "weak")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown scaling kind {kind!r}; valid: {', '.join(KINDS)}")


def speedup(kind: str, t_base: float, n_base: int, t: float, n: int) -> float:
    """Strong: T1/TN. Weak: (N/N1) * T1/TN (the work per epoch grows N/N1-fold)."""
    _check_kind(kind)
    return t_base / t if kind == "strong" else (n / n_base) * t_base / t


def efficiency(kind: str, t_base: float, n_base: int, t: float, n: int) -> float:
    """Strong: T1*N1 / (TN*N). Weak: T1/TN. 1.0 is perfect scaling."""
    _check_kind(kind)
    return t_base * n_base / (t * n) if kind == "strong" else t_base / t


def ideal_epoch_time(kind: str, t_base: float, n_base: int, n: int) -> float:
    """Strong: T1*N1/N (time falls as 1/N). Weak: T1 (flat)."""
    _check_kind(kind)
    return t_base * n_base / n if kind == "strong" else t_base


def kind_of(scaling_mode: str | None) -> str:
    """The formulas a scaling mode uses: weak for `weak`, strong for `strong` and `none` (whole dataset each run)."""
    return "weak" if scaling_mode == "weak" else "strong"
