"""The report's PNG plots of scaling (matplotlib, Agg: no display needed); the studies' plots (ZeRO, per rank) are
in vit_dt/analysis/plots_studies.py, which shares the helpers here (_save, _panels, _legend).

Each function writes one PNG and returns its path, or None when the sweep has no data for that plot (the report then says it was skipped and why).

GPU counts are drawn on a log2 axis with a tick at every measured count; strong-scaling epoch times on a log
axis too, so the ideal T1*N1/N line is straight. docs/report.md describes how to read each plot.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from vit_dt.analysis.series import Series  # noqa: E402

DPI = 110
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
PART_COLORS = {"compute": "#4C72B0", "allreduce": "#DD8452", "optimizer": "#55A868", "data_wait": "#C44E52",
               "other": "#B0B0B0"}
PART_LABELS = {"compute": "compute (fwd + bwd)", "allreduce": "gradient all-reduce", "optimizer": "optimizer step",
               "data_wait": "data wait", "other": "other"}


def _count_axis(ax: Any, counts: Sequence[int], label: str = "GPUs (ranks)") -> None:
    counts = sorted(set(int(c) for c in counts))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(counts))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(counts) > 1:
        ax.set_xlim(counts[0] / 1.3, counts[-1] * 1.3)
    else:
        ax.set_xlim(counts[0] / 2, counts[0] * 2)
    ax.set_xlabel(label)


def _efficiency_axis(ax: Any, percents: Sequence[float]) -> None:
    """0-110% unless a value lies outside: then the axis widens to show it. A noisy run can measure 815%; a fixed
    range would drop that point without a mark, and what was measured must stay visible."""
    values = [v for v in percents if v is not None and v == v]       # NaN: nothing to draw
    top = max(110.0, 1.08 * max(values, default=0.0))
    bottom = min(0.0, 1.08 * min(values, default=0.0))
    ax.set_ylim(bottom, top)


def _plain_log_y(ax: Any) -> None:
    ax.set_yscale("log")
    formatter = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))


def _time_axis(ax: Any, kind: str, values: Sequence[float]) -> None:
    """Strong scaling over a wide range: log y, so the ideal T1·N1/N is straight. Otherwise linear from 0."""
    values = [v for v in values if v and v > 0]
    if kind == "strong" and values and max(values) / min(values) >= 4:
        _plain_log_y(ax)
    else:
        ax.set_ylim(0, 1.08 * max(values, default=1.0))


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def _by_kind(series: Sequence[Series], min_points: int = 1) -> dict[str, list[Series]]:
    kinds: dict[str, list[Series]] = {}
    for s in series:
        if len(s.points) >= min_points:
            kinds.setdefault(s.kind, []).append(s)
    return {k: kinds[k] for k in ("strong", "weak") if k in kinds}


def _panels(n: int, width: float = 6.4, height: float = 4.6) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _legend(ax: Any, **kwargs: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, framealpha=0.9, **kwargs)


def _error_bars(ax: Any, xs: Sequence[float], ys: Sequence[float], intervals: Sequence[tuple], color: str,
                scale: float = 1.0) -> None:
    """Each point's 95% interval (vit_dt/analysis/stats.py) as a capped vertical bar; points without one (a single
    run) get none."""
    kept = [(x, y, lo * scale, hi * scale) for x, y, (lo, hi) in zip(xs, ys, intervals)
            if lo is not None and hi is not None and hi > lo]
    if kept:
        ax.errorbar([k[0] for k in kept], [k[1] for k in kept],
                    yerr=[[max(0.0, y - lo) for _, y, lo, _ in kept], [max(0.0, hi - y) for _, y, _, hi in kept]],
                    fmt="none", ecolor=color, elinewidth=1.6, capsize=5, capthick=1.6)


def _time_interval(point: Any) -> tuple:
    spread = point.epoch_time or {}
    return spread.get("ci_low"), spread.get("ci_high")


def plot_epoch_time(series: Sequence[Series], path: Path) -> Path | None:
    """Epoch time vs GPUs, one panel per scaling kind, each series with its own dashed ideal line."""
    kinds = _by_kind(series, min_points=2)
    if not kinds:
        return None
    fig, axes = _panels(len(kinds))
    for ax, (kind, members) in zip(axes, kinds.items()):
        counts = []
        for i, s in enumerate(members):
            color = COLORS[i % len(COLORS)]
            ns = [p.world_size for p in s.points]
            counts += ns
            ax.plot(ns, [p.epoch_time_s for p in s.points], "o-", color=color, label=s.key.short_label())
            _error_bars(ax, ns, [p.epoch_time_s for p in s.points], [_time_interval(p) for p in s.points], color)
            ax.plot(ns, [p.ideal_epoch_time_s for p in s.points], "--", color=color, alpha=0.6)
        ideal = "ideal T1·N1/N (dashed, per series)" if kind == "strong" else "ideal: flat T1 (dashed, per series)"
        ax.plot([], [], "--", color="gray", label=ideal)
        _count_axis(ax, counts)
        _time_axis(ax, kind, [v for s in members for p in s.points
                              for v in (p.epoch_time_s, p.ideal_epoch_time_s, _time_interval(p)[1])])
        ax.set_ylabel("epoch time (s, first epoch excluded; bars: 95% CI over repeats)")
        ax.set_title(f"{kind} scaling: epoch time")
        ax.grid(True, which="major", alpha=0.3)
        _legend(ax)
    return _save(fig, path)


def plot_speedup_efficiency(series: Sequence[Series], path: Path) -> Path | None:
    """Left: speed-up vs GPUs with the ideal N/N1; right: efficiency with the 100% line."""
    usable = [s for s in series if len(s.points) >= 2]
    if not usable:
        return None
    fig, (left, right) = _panels(2)
    counts = sorted({p.world_size for s in usable for p in s.points})
    for i, s in enumerate(usable):
        color = COLORS[i % len(COLORS)]
        ns = [p.world_size for p in s.points]
        style = "o-" if s.kind == "strong" else "s-."
        left.plot(ns, [p.speedup for p in s.points], style, color=color, label=s.key.short_label())
        right.plot(ns, [100 * p.efficiency for p in s.points], style, color=color, label=s.key.short_label())
        _error_bars(left, ns, [p.speedup for p in s.points], [p.speedup_ci for p in s.points], color)
        _error_bars(right, ns, [100 * p.efficiency for p in s.points], [p.efficiency_ci for p in s.points], color,
                    scale=100.0)
    bases = sorted({s.baseline_world_size for s in usable})
    for base in bases:
        ideal_ns = [n for n in counts if n >= base]
        left.plot(ideal_ns, [n / base for n in ideal_ns], ":", color="black", alpha=0.6,
                  label=f"ideal N/N1 (N1={base})")
    right.axhline(100, color="black", ls=":", alpha=0.6, label="ideal 100%")
    for ax in (left, right):
        _count_axis(ax, counts)
        ax.grid(True, alpha=0.3)
    speedups = [v for s in usable for p in s.points for v in (p.speedup, p.speedup_ci[1]) if v] \
        + [n / b for b in bases for n in counts if n >= b]
    if max(speedups) / min(speedups) >= 4:          # a log2 axis only helps over a wide range
        left.set_yscale("log", base=2)
        left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        left.set_ylim(0, 1.1 * max(speedups))
    left.set_ylabel("speed-up (weak: scaled speed-up N/N1·T1/TN)")
    left.set_title("speed-up vs baseline (smallest GPU count)")
    right.set_ylabel("efficiency (%)")
    _efficiency_axis(right, [100 * v for s in usable for p in s.points
                             for v in (p.efficiency, p.efficiency_ci[0], p.efficiency_ci[1]) if v is not None])
    right.set_title("scaling efficiency (strong: T1·N1/(TN·N), weak: T1/TN)")
    _legend(left, loc="upper left")
    _legend(right, loc="lower left")
    return _save(fig, path)


def _run_label(row: dict, show_scaling: bool) -> str:
    layout = row["layout"] if row["layout"] in ("intra", "inter") else row["layout"].replace(" ", "\n")
    text = f"N={row['world_size']}\n{layout}"
    text += f"\n{row['scaling']}" if show_scaling else ""
    return text + (f"\n{row['knobs']}" if row.get("knobs") else "")


def plot_breakdown(rows: Sequence[dict], path: Path) -> Path | None:
    """Stacked ms per step (compute, all-reduce, optimizer, data wait, other) per run, grouped by micro-batch;
    below, the same as shares of the step."""
    if not rows:
        return None
    show_scaling = len({r["scaling"] for r in rows}) > 1
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["micro_batch"]].append(row)
    positions, labels, ordered, group_spans = [], [], [], []
    x = 0.0
    for micro in sorted(groups, key=lambda m: m or 0):
        start = x
        for row in groups[micro]:
            positions.append(x)
            labels.append(_run_label(row, show_scaling))
            ordered.append(row)
            x += 1
        group_spans.append((start, x - 1, micro))
        x += 0.8
    width = max(7.0, 0.75 * len(ordered) + 2.5)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 8.2), sharex=True)
    for ax, normalise in ((top, False), (bottom, True)):
        base = [0.0] * len(ordered)
        for part in ("compute", "allreduce", "optimizer", "data_wait", "other"):
            values = [r[part] / r["step_time"] * 100 if normalise and r["step_time"] else r[part] for r in ordered]
            if not any(values):
                continue
            ax.bar(positions, values, 0.7, bottom=base, color=PART_COLORS[part], label=PART_LABELS[part])
            base = [b + v for b, v in zip(base, values)]
        ax.grid(True, axis="y", alpha=0.3)
    top.set_ylabel("ms per optimizer step")
    bottom.set_ylabel("share of the step (%)")
    bottom.set_ylim(0, 100)
    bottom.set_xticks(positions)
    bottom.set_xticklabels(labels, fontsize=8)
    for start, end, micro in group_spans:
        top.annotate(f"micro-batch {micro}", xy=((start + end) / 2, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    top.set_title("where a training step goes (per run, grouped by micro-batch per rank)", pad=22)
    handles, names = top.get_legend_handles_labels()
    top.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_comm_share(rows: Sequence[dict], path: Path) -> Path | None:
    """All-reduce share of the step vs micro-batch per rank, one line per (world size, layout, swept knobs)."""
    rows = [r for r in rows if r.get("comm_share") is not None and r.get("micro_batch")]
    if not rows:
        return None
    lines: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        lines[(row["layout"], row["world_size"], row.get("knobs") or "")].append(row)
    fig, axes = _panels(1, width=7.2)
    ax = axes[0]
    for i, (key, members) in enumerate(sorted(lines.items())):
        members = sorted(members, key=lambda r: r["micro_batch"])
        ax.plot([r["micro_batch"] for r in members], [100 * r["comm_share"] for r in members],
                "o-" if key[0] == "intra" else "s--", color=COLORS[i % len(COLORS)],
                label=" ".join(part for part in (f"N={key[1]}", key[0], key[2]) if part))
    _count_axis(ax, [r["micro_batch"] for r in rows], label="micro-batch per rank (images)")
    ax.set_ylabel("all-reduce share of step time (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("communication share vs batch size")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_accuracy(rows: Sequence[dict], path: Path) -> Path | None:
    """Final validation (filled) and train (hollow) accuracy vs global batch, one colour per scaling mode (and
    swept knobs' values)."""
    rows = [r for r in rows if r.get("global_batch")]
    if not rows:
        return None
    fig, axes = _panels(1, width=7.2)
    ax = axes[0]
    for i, (scaling, knobs) in enumerate(sorted({(r["scaling"], r.get("knobs") or "") for r in rows})):
        color = COLORS[i % len(COLORS)]
        members = sorted((r for r in rows if (r["scaling"], r.get("knobs") or "") == (scaling, knobs)),
                         key=lambda r: r["global_batch"])
        name = f"{scaling} {knobs}" if knobs else scaling
        val = [(r["global_batch"], r["final_val_acc"]) for r in members if r["final_val_acc"] is not None]
        train = [(r["global_batch"], r["final_train_acc"]) for r in members if r["final_train_acc"] is not None]
        if val:
            ax.plot(*zip(*val), "o", color=color, label=f"{name}: validation")
        if train:
            ax.plot(*zip(*train), "o", mfc="none", color=color, label=f"{name}: train (last epoch)")
    _count_axis(ax, [r["global_batch"] for r in rows], label="global batch (images per optimizer step)")
    ax.set_ylabel("final accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy after the same number of epochs vs global batch")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_layouts(pairs: Sequence[dict], path: Path) -> Path | None:
    """Epoch time intra-node vs inter-node at equal GPU count, efficiency written on each bar."""
    if not pairs:
        return None
    fig, axes = _panels(1, width=max(5.5, 1.4 * len(pairs) + 3))
    ax = axes[0]
    xs = list(range(len(pairs)))
    for offset, layout, color in ((-0.18, "intra", COLORS[0]), (0.18, "inter", COLORS[1])):
        values = [p[f"{layout}_epoch_time_s"] for p in pairs]
        bars = ax.bar([x + offset for x in xs], values, 0.34, color=color,
                      label=f"{layout}-node ({'1 node × N' if layout == 'intra' else 'N nodes × 1'})")
        for bar, p in zip(bars, pairs):
            eff = p[f"{layout}_efficiency"]
            ax.annotate(f"{100 * eff:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(xs)
    multi_family = len({p["family"] for p in pairs}) > 1
    ax.set_xticklabels([f"N={p['world_size']}" + (f"\n{p['family']}" if multi_family else "") for p in pairs],
                       fontsize=8 if multi_family else 10)
    ax.set_ylabel("epoch time (s); efficiency on the bars")
    ax.set_title("intra-node vs inter-node at equal GPU count")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_ylim(0, 1.1 * max(max(p["intra_epoch_time_s"], p["inter_epoch_time_s"]) for p in pairs))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 if multi_family else -0.08), ncol=2)
    return _save(fig, path)


def plot_epoch_curves(curves: Sequence[dict], path: Path) -> Path | None:
    """Per run: train loss and validation accuracy per epoch; colour from the global batch (small: dark), marker
    from the world size."""
    curves = [c for c in curves if any(v is not None for v in c["train_loss"] + c["val_acc"])]
    if not curves:
        return None
    fig, (left, right) = _panels(2, width=6.0)
    cmap = plt.get_cmap("viridis")
    batches = sorted({c["global_batch"] or 0 for c in curves})
    sizes = sorted({c["world_size"] for c in curves})
    markers = "o^sDvP*X"        # one per world size: equal global batches at different N stay visible
    for c in curves:
        shade = batches.index(c["global_batch"] or 0) / max(1, len(batches) - 1)
        style = "-" if c["scaling"].startswith("strong") or c["scaling"] == "none" else "--"
        marker = markers[sizes.index(c["world_size"]) % len(markers)]
        epochs = list(range(1, len(c["train_loss"]) + 1))
        for ax, key in ((left, "train_loss"), (right, "val_acc")):
            ax.plot(epochs, c[key], style, marker=marker, ms=5, mfc="none", color=cmap(0.9 * shade), label=c["label"])
    for ax, name in ((left, "train loss"), (right, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    left.set_title("training loss per epoch")
    right.set_title("validation accuracy per epoch")
    right.set_ylim(0, 1)
    if len(curves) <= 14:
        right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        right.text(1.02, 0.5, f"{len(curves)} runs; colour: global batch\n{batches[0]} (dark) … {batches[-1]} (light)",
                   transform=right.transAxes, fontsize=8, va="center")
    return _save(fig, path)


def plot_predicted(comparisons: Sequence[dict], path: Path) -> Path | None:
    """Measured (markers) next to the model (solid: no overlap, dotted: overlap), per scaling kind: epoch time on
    top, efficiency below."""
    comparisons = [c for c in comparisons if c["points"]]
    if not comparisons:
        return None
    kinds: dict[str, list[dict]] = {}
    for c in comparisons:
        kinds.setdefault(c["kind"], []).append(c)
    fig, grid = plt.subplots(2, len(kinds), figsize=(6.6 * len(kinds), 8.4), squeeze=False)
    for column, (kind, members) in enumerate(kinds.items()):
        top, bottom = grid[0][column], grid[1][column]
        counts = []
        for i, c in enumerate(members):
            color = COLORS[i % len(COLORS)]
            ns = [p["world_size"] for p in c["points"]]
            counts += ns
            top.plot(ns, [p["measured_epoch_s"] for p in c["points"]], "o", ms=7, color=color, label=c["label"])
            top.plot(ns, [p["predicted_epoch_s"] for p in c["points"]], "-", color=color, alpha=0.8)
            top.plot(ns, [p["predicted_overlap_epoch_s"] for p in c["points"]], ":", color=color, alpha=0.8)
            bottom.plot(ns, [100 * p["measured_efficiency"] for p in c["points"]], "o", ms=7, color=color)
            bottom.plot(ns, [100 * p["predicted_efficiency"] for p in c["points"]], "-", color=color, alpha=0.8)
        top.plot([], [], "o", color="gray", label="measured")
        top.plot([], [], "-", color="gray", label="model, no overlap")
        top.plot([], [], ":", color="gray", label="model, all-reduce overlapped with backward")
        for ax in (top, bottom):
            _count_axis(ax, counts)
            ax.grid(True, alpha=0.3)
        _time_axis(top, kind, [p[k] for c in members for p in c["points"]
                               for k in ("measured_epoch_s", "predicted_epoch_s", "predicted_overlap_epoch_s")])
        top.set_ylabel("epoch time (s)")
        top.set_title(f"{kind} scaling: measured vs scaling model")
        bottom.set_ylabel("efficiency (%), model without overlap")
        _efficiency_axis(bottom, [100 * p[k] for c in members for p in c["points"]
                                  for k in ("measured_efficiency", "predicted_efficiency")])
        bottom.axhline(100, color="black", ls=":", alpha=0.5)
        _legend(top)
    return _save(fig, path)
