"""The PNG plots of the studies beyond the paper (docs/studies/): ZeRO stages (memory per rank against step time)
and per-rank step times (the slowest rank, its host and GPU). Same conventions as vit_dt/analysis/plots.py."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_dt.analysis.plots import PART_COLORS, _legend, _panels, _save, plt  # plt: with the Agg backend set

STAGE_COLORS = {0: "#4C72B0", 1: "#DD8452", 2: "#55A868", 3: "#C44E52"}
MEMORY_COLORS = {"params": "#4C72B0", "gradients": "#DD8452", "optimizer_states": "#55A868",
                 "master_params": "#8172B3"}
MEMORY_LABELS = {"params": "parameters", "gradients": "gradients (peak)", "optimizer_states": "optimizer states",
                 "master_params": "fp32 master copy"}


def memory_unit(values_gb: Sequence[float | None]) -> tuple[str, float]:
    """GiB for real models, MiB when everything is below 1 GiB (a tiny ViT holds a few MiB)."""
    present = [v for v in values_gb if v]
    return ("GiB", 1.0) if present and max(present) >= 1.0 else ("MiB", 1024.0)


def _zero_tick(row: dict, show_world: bool, show_model: bool) -> str:
    text = row["label"].replace(" + ", "\n+ ")
    if show_world:
        text += f"\nN={row['world_size']}"
    if show_model:
        text += f"\n{row['model']}"
    return text


def _scatter_stages(ax: Any, rows: Sequence[dict], key: str, scale: float, show_world: bool, annotate: bool) -> None:
    """One marker per run, coloured by stage (hollow square: offload); text labels only when colour and marker do
    not tell the runs apart (several world sizes, models or repeats)."""
    points = [(r["step_time_ms"], r[key] * scale, r) for r in rows
              if r.get(key) is not None and r.get("step_time_ms") is not None]
    if not points:
        ax.text(0.5, 0.5, f"no {key} in these records", transform=ax.transAxes, ha="center")
        return
    x_span = max(p[0] for p in points) or 1.0
    y_span = max(p[1] for p in points) or 1.0
    placed: list[tuple[float, float, int]] = []
    for x, y, row in sorted(points, key=lambda p: (p[0], p[1])):
        color = STAGE_COLORS.get(row["zero_stage"], "gray")
        ax.plot(x, y, "s" if row["offload"] else "o", ms=9, color=color, mfc="white" if row["offload"] else color,
                mew=2)
        if not annotate:
            continue
        # Labels of neighbouring points would overlap: alternate them above and below, further each time.
        crowd = sum(1 for px, py, _ in placed if abs(px - x) < 0.15 * x_span and abs(py - y) < 0.08 * y_span)
        placed.append((x, y, crowd))
        dy = 3 + 14 * ((crowd + 1) // 2) * (1 if crowd % 2 == 0 else -1)
        text = row["label"] + (f" N={row['world_size']}" if show_world else "")
        ax.annotate(text, (x, y), xytext=(7, dy), textcoords="offset points", fontsize=8, color=color)
    ax.set_xlabel("step time (ms per optimizer step)")
    ax.set_xlim(0, 1.3 * x_span)
    ax.set_ylim(0, 1.15 * y_span)
    ax.grid(True, alpha=0.3)


def plot_zero_study(rows: Sequence[dict], path: Path, peak_meaning: str = "peak memory") -> Path | None:
    """Per ZeRO configuration: the model states one rank holds (stacked) and the step split (top); memory vs
    step time, model states and peak memory (bottom). Hollow squares: offload."""
    rows = [r for r in rows if r.get("step_time_ms") is not None]
    if len({(r["zero_stage"], r["offload"]) for r in rows}) < 2:
        return None
    show_world = len({r["world_size"] for r in rows}) > 1
    show_model = len({r["model"] for r in rows}) > 1
    annotate = show_world or show_model or len({(r["zero_stage"], r["offload"]) for r in rows}) < len(rows)
    unit, scale = memory_unit([r.get("model_states_gb") for r in rows])
    peak_unit, peak_scale = memory_unit([r.get("peak_mem_gb") for r in rows])
    fig, grid = plt.subplots(2, 2, figsize=(13.0, 9.6))
    (states, steps), (mem_time, peak_time) = grid
    xs = list(range(len(rows)))
    ticks = [_zero_tick(r, show_world, show_model) for r in rows]

    base = [0.0] * len(rows)
    for part in ("params", "gradients", "optimizer_states", "master_params"):
        values = [(r.get(f"{part}_gb") or 0.0) * scale for r in rows]
        if any(values):
            states.bar(xs, values, 0.65, bottom=base, color=MEMORY_COLORS[part], label=MEMORY_LABELS[part])
            base = [b + v for b, v in zip(base, values)]
    if not any(base):
        states.text(0.5, 0.5, "no memory_model_gb in these records", transform=states.transAxes, ha="center")
    states.set_ylim(0, 1.3 * max(base) if any(base) else 1.0)          # room for the legend
    states.set_ylabel(f"model states per rank ({unit})")
    states.set_title("what one rank holds (measured from the engine)")
    _legend(states, loc="upper right")

    base = [0.0] * len(rows)
    split = {"compute (fwd + bwd)": ("compute_ms", PART_COLORS["compute"]),
             "gradient all-reduce / reduce-scatter": ("allreduce_ms", PART_COLORS["allreduce"]),
             "optimizer step": ("optimizer_ms", PART_COLORS["optimizer"])}
    for name, (key, color) in split.items():
        values = [float(r.get(key) or 0.0) for r in rows]
        if any(values):
            steps.bar(xs, values, 0.65, bottom=base, color=color, label=name)
            base = [b + v for b, v in zip(base, values)]
    other = [max(0.0, r["step_time_ms"] - b) for r, b in zip(rows, base)]
    steps.bar(xs, other, 0.65, bottom=base, color=PART_COLORS["other"], label="other (incl. ZeRO-3 gathers)")
    steps.set_ylim(0, 1.35 * max(r["step_time_ms"] for r in rows))
    steps.set_ylabel("ms per optimizer step")
    steps.set_title("where the step goes (DeepSpeed timers)")
    _legend(steps, loc="upper left")
    for ax in (states, steps):
        ax.set_xticks(xs)
        ax.set_xticklabels(ticks, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)

    _scatter_stages(mem_time, rows, "model_states_gb", scale, show_world, annotate)
    mem_time.set_ylabel(f"model states per rank ({unit})")
    mem_time.set_title("memory vs speed: model states")
    _scatter_stages(peak_time, rows, "peak_mem_gb", peak_scale, show_world, annotate)
    peak_time.set_ylabel(f"{peak_meaning} ({peak_unit})", fontsize=9)
    peak_time.set_title("memory vs speed: peak memory")
    for ax in (mem_time, peak_time):
        for stage, color in STAGE_COLORS.items():
            if any(r["zero_stage"] == stage for r in rows):
                ax.plot([], [], "o", color=color, label=f"ZeRO-{stage}")
        if any(r["offload"] for r in rows):
            ax.plot([], [], "s", color="gray", mfc="white", mew=2, label="with offload")
        _legend(ax, loc="lower right")
    fig.suptitle("ZeRO stages: memory per rank against step time", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _rank_tick(rank: dict) -> str:
    where = rank.get("node") or rank.get("host") or "?"
    gpu = rank.get("gpu_model") or rank.get("gpu_name") or ("cpu" if rank.get("device") == "cpu" else "?")
    return f"rank {rank['rank']}\n{where}\n{gpu}"


def plot_per_rank(runs: Sequence[dict], path: Path) -> Path | None:
    """One panel per run: each rank's compute and all-reduce time per step, its host and GPU under the bar; the
    slowest rank outlined and named. The fast ranks' taller all-reduce is their wait for the slow one."""
    runs = [r for r in runs if r.get("ranks")]
    if not runs:
        return None
    fig, axes = _panels(len(runs), width=max(5.5, 0.9 * max(len(r["ranks"]) for r in runs) + 3), height=5.0)
    for ax, run in zip(axes, runs):
        ranks = run["ranks"]
        xs = list(range(len(ranks)))
        compute = [x["compute_ms"] for x in ranks]
        allreduce = [x["allreduce_ms"] for x in ranks]
        other = [max(0.0, x["step_time_ms"] - c - a) for x, c, a in zip(ranks, compute, allreduce)]
        ax.bar(xs, compute, 0.65, color=PART_COLORS["compute"], label="compute (fwd + bwd + optimizer)")
        ax.bar(xs, allreduce, 0.65, bottom=compute, color=PART_COLORS["allreduce"],
               label="all-reduce (incl. waiting for others)")
        ax.bar(xs, other, 0.65, bottom=[c + a for c, a in zip(compute, allreduce)], color=PART_COLORS["other"],
               label="other")
        slow = next(i for i, x in enumerate(ranks) if x["rank"] == run["slowest_rank"])
        top = compute[slow] + allreduce[slow] + other[slow]
        ax.bar([slow], [top], 0.65, fill=False, edgecolor="black", linewidth=2)
        verdict = "straggler" if run["flagged"] else "slowest"
        ax.annotate(f"{verdict}: +{100 * run['skew']:.0f}% compute", (slow, top), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
        ax.set_xticks(xs)
        ax.set_xticklabels([_rank_tick(x) for x in ranks], fontsize=8)
        ax.set_ylabel("ms per optimizer step")
        ax.set_ylim(0, 1.18 * max(c + a + o for c, a, o in zip(compute, allreduce, other)))
        ax.set_title(run["label"], fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("per-rank step time: the slowest rank, its host and GPU", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)
