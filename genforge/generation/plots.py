"""Pictures of samples that are not pictures: series drawn as small multiples, one panel per channel.

The result is a uint8 RGB array, so it goes through the same PNG writer (with provenance metadata and the
ledger) as an image grid, and into TensorBoard the same way.
"""

from __future__ import annotations

import numpy as np

MAX_CHANNELS = 8   # panels drawn per column (TEP has 52 channels: the first 8 are drawn, the title says so)
MAX_LINES = 8      # series overlaid per panel


def series_panels(x: np.ndarray, y: np.ndarray | None = None, *, class_names: list[str] | None = None,
                   channel_names: list[str] | None = None, real: np.ndarray | None = None,
                   real_y: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """Float series (n, c, t) -> an RGB uint8 image (h, w, 3): one row of panels per channel, generated
    series in the right column and, when ``real`` (m, c, t) is given, real ones in the left column on the
    same vertical scale. Lines are coloured by class when ``y`` is given."""
    import matplotlib  # late: half a second to import, and image runs never draw a series

    matplotlib.use("Agg")  # no display: plots are rendered to arrays
    import matplotlib.pyplot as plt

    n, c, t = x.shape
    shown = min(c, MAX_CHANNELS)
    names = channel_names or [f"channel {i}" for i in range(c)]
    columns = [("generated", x, y)] if real is None else [("real", real, real_y), ("generated", x, y)]
    fig, axes = plt.subplots(shown, len(columns), figsize=(4.2 * len(columns), 1.3 * shown + 0.6),
                             squeeze=False, sharex=True)
    colours = plt.get_cmap("tab10")
    for col, (label, data, classes) in enumerate(columns):
        for ch in range(shown):
            ax = axes[ch, col]
            for i in range(min(len(data), MAX_LINES)):
                k = int(classes[i]) if classes is not None else 0
                ax.plot(np.arange(data.shape[2]), data[i, ch], lw=0.8, color=colours(k % 10), alpha=0.85)
            if col == 0:
                ax.set_ylabel(names[ch], fontsize=7, rotation=0, ha="right", va="center")
            ax.tick_params(labelsize=6)
            if ch == 0:
                ax.set_title(label, fontsize=8)
        if real is not None:  # the same y-limits left and right, so a shape can be compared by eye
            for ch in range(shown):
                lo = min(axes[ch, 0].get_ylim()[0], axes[ch, -1].get_ylim()[0])
                hi = max(axes[ch, 0].get_ylim()[1], axes[ch, -1].get_ylim()[1])
                for a in axes[ch]:
                    a.set_ylim(lo, hi)
    legend = ""
    if y is not None and class_names:
        drawn = sorted({int(k) for k in y[:MAX_LINES]})
        legend = "; colours: " + ", ".join(f"{class_names[k]}" for k in drawn)
    more = f" (channels 1-{shown} of {c})" if shown < c else ""
    fig.suptitle(f"{title}{more}{legend}", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
