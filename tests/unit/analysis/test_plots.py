"""Pixel checks of what a plot must show: every measured point, wherever it lies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image
from scipy import ndimage

from tests.fixtures.plots import assert_real_png
from vit_dt.analysis import plots

MARKER_MIN_PIXELS = 40      # a 7-point marker at the plots' DPI is a disc of ~90 pixels; a line's crossing far less


def _comparison(measured_efficiencies: list[float]) -> dict:
    points = []
    for n, eff in zip((1, 2, 4), measured_efficiencies):
        points.append({"world_size": n, "measured_epoch_s": 100.0 / n / eff, "predicted_epoch_s": 100.0 / n / 0.9,
                       "predicted_overlap_epoch_s": 100.0 / n / 0.95, "measured_efficiency": eff,
                       "predicted_efficiency": 0.9})
    return {"kind": "strong", "label": "vit_tiny digits", "points": points}


def _marker_count(path: Path, color: str, rows: slice) -> int:
    """Discs of exactly the series colour (the model's lines are drawn translucent, so they do not match)."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)[rows]
    target = np.array([round(255 * c) for c in to_rgb(color)])
    mask = np.all(np.abs(rgb - target) <= 2, axis=-1)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return int(np.sum(np.asarray(sizes) >= MARKER_MIN_PIXELS))


def test_a_measured_efficiency_far_above_100_percent_is_still_drawn(tmp_path) -> None:
    """A noisy run measured 815% at 4 GPUs: the efficiency panel must show all three measured points, not the two
    that fit a fixed 0-110% range."""
    path = plots.plot_predicted([_comparison([1.0, 0.92, 8.15])], tmp_path / "predicted.png")
    assert_real_png(path)
    with Image.open(path) as image:
        height = image.size[1]
    bottom_panel = slice(height // 2, height)
    assert _marker_count(path, plots.COLORS[0], bottom_panel) == 3


def test_in_range_efficiencies_keep_their_axis_and_every_point(tmp_path) -> None:
    """The counting above is sound: three in-range points are three discs."""
    path = plots.plot_predicted([_comparison([1.0, 0.92, 0.81])], tmp_path / "predicted.png")
    with Image.open(path) as image:
        height = image.size[1]
    assert _marker_count(path, plots.COLORS[0], slice(height // 2, height)) == 3
