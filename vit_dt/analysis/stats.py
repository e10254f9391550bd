"""Statistics of repeated runs: mean, spread and a Student-t confidence interval per sweep point, and the interval of
a ratio of two such means (speed-up, efficiency, a compare ratio). Pure functions, standard library only.

The unit of repetition is a run (one Slurm job of a point; repeats differ only in their seed): each run contributes
its mean steady-state epoch time (first epoch of each attempt left out). Epochs within one run are not independent
samples of the cluster's state (they share the nodes, the placement, the neighbours), so they are not pooled.

A ratio R = c * A / B of two independent means (A: the baseline's epoch time T1, B: the point's TN, c a constant such
as N1/N) gets its interval by first-order error propagation (the delta method):

    relative standard error   r = sqrt((se_A / A)^2 + (se_B / B)^2),      se = s / sqrt(n)
    degrees of freedom        Welch-Satterthwaite on the two relative variances
    95% interval              R * (1 -+ t(0.975, df) * r)

A side with one run contributes no spread and no degrees of freedom; with no spread on either side there is no
interval (None). docs/report.md states the method and its limits.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

CONFIDENCE = 0.95           # every interval vit-dt reports
NOISY_SHARE = 0.10          # default: a point is noisy when its interval's half-width exceeds this share of its mean


# ---------------------------------------------------------------- Student's t

def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (0.5 < p < 1), by bisection on t_cdf: exact to ~1e-12."""
    if not 0.5 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


# ---------------------------------------------------------------- one quantity over repeats

@dataclass(frozen=True)
class Spread:
    """A quantity over n repeats: mean, sample standard deviation, range and the 95% t interval of the mean.
    std and the interval are None with one run."""
    n: int
    mean: float
    std: float | None
    min: float
    max: float
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_low is None or self.ci_high is None else (self.ci_high - self.ci_low) / 2

    @property
    def rel_half_width(self) -> float | None:
        """The interval's half-width as a share of the mean (None without an interval or with a zero mean)."""
        hw = self.half_width
        return None if hw is None or not self.mean else abs(hw / self.mean)

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "rel_half_width": self.rel_half_width}


def spread(values: Iterable[float | None]) -> Spread | None:
    """Spread of the values present (None is skipped); None when there is none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Spread(1, mean, None, xs[0], xs[0], None, None)
    std = statistics.stdev(xs)
    half = t_quantile(0.5 + CONFIDENCE / 2, len(xs) - 1) * std / math.sqrt(len(xs))
    return Spread(len(xs), mean, std, min(xs), max(xs), mean - half, mean + half)


# ---------------------------------------------------------------- a ratio of two means

@dataclass(frozen=True)
class Ratio:
    """c * A / B with its 95% interval (None where neither side has a spread)."""
    value: float
    ci_low: float | None
    ci_high: float | None
    df: float | None = None

    @property
    def rel_half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or not self.value:
            return None
        return abs((self.ci_high - self.ci_low) / 2 / self.value)

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "df": self.df}


def _rel_var(s: Spread) -> tuple[float, float] | None:
    """(relative variance of the mean, its degrees of freedom), or None with one run."""
    if s.n < 2 or s.std is None or not s.mean:
        return None
    return (s.std / s.mean) ** 2 / s.n, s.n - 1


def ratio(numerator: Spread, denominator: Spread, scale: float = 1.0) -> Ratio:
    """scale * numerator.mean / denominator.mean with the delta-method interval (module docstring)."""
    value = scale * numerator.mean / denominator.mean
    parts = [p for p in (_rel_var(numerator), _rel_var(denominator)) if p is not None]
    total = sum(v for v, _ in parts)
    if not parts or total <= 0:
        return Ratio(value, None, None)
    df = total ** 2 / sum(v ** 2 / d for v, d in parts)
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * math.sqrt(total) * abs(value)
    return Ratio(value, value - half, value + half, df)


def exact(value: float) -> Ratio:
    """A ratio with no spread by definition (the baseline's speed-up against itself is 1)."""
    return Ratio(value, value, value, None)


def is_noisy(share: float | None, threshold: float = NOISY_SHARE) -> bool:
    """Whether an interval's half-width (as a share of its value) exceeds the threshold."""
    return share is not None and share > threshold


def parse_share(text: str) -> float:
    """"10%" or "0.1" -> 0.1; a clear error for anything else (used by --noisy-share and --tolerance)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a share; valid: a percentage such as 5% or a fraction such as 0.05") \
            from None
    if not 0 <= value < 1:
        raise ValueError(f"{text!r} is out of range; valid: 0% to 99% (0 to 0.99)")
    return value
