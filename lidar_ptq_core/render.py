"""Bird's-eye-view pictures of a point cloud with ground truth and detections (matplotlib, no screen needed).

Generic over where the data came from: points are (N, >=3) x, y, z[, intensity] in the lidar frame, boxes follow
lidar_ptq_core.detections. Used by `lidar-ptq sim --render` and `lidar-ptq detect --render`; `render_comparison`
draws two detectors' boxes on the same frames side by side (`lidar-ptq compare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .detections import Detections, GroundTruth
from .io_utils import atomic_path

# Fixed colours for the benchmark classes so pictures are comparable; other names fall back to a palette.
CLASS_COLOURS = {"Car": "#2f9bff", "Truck": "#ff9f1a", "Pedestrian": "#ff3b6b", "Cyclist": "#35e07a"}
_FALLBACK = ["#c77dff", "#ffd60a", "#00f5d4", "#f15bb5", "#9b5de5", "#fee440", "#00bbf9", "#e76f51"]
RING_STEP_M = 25.0
MISSED_COLOUR = "#ff3030"  # a reference box the candidate did not reproduce
EXTRA_COLOUR = "#ffd60a"  # a candidate box with no reference box


def class_colour(name: str, index: int) -> str:
    return CLASS_COLOURS.get(name, _FALLBACK[index % len(_FALLBACK)])


def render_bev(
    path,
    points,
    gt: GroundTruth | None = None,
    detections: Detections | None = None,
    xy_range=None,
    title: str = "",
    color_by: str = "height",
    min_score: float = 0.0,
    size_inches: float = 11.0,  # figure width
    dpi: int = 150,
) -> None:
    """Write a BEV PNG to `path` (atomically).

    xy_range: None (fit the data, square around the sensor), a half-width in metres, or (x_min, x_max, y_min, y_max).
    color_by: "height" or "intensity" (the fourth point column). Ignored ground-truth boxes are dashed, detections
    are dotted with their score; detections below `min_score` are not drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pts = np.asarray(points, dtype=np.float32)
    if pts.size == 0:
        pts = np.zeros((0, 4), np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, >=3); got {pts.shape}")
    if color_by not in ("height", "intensity"):
        raise ValueError(f"color_by must be 'height' or 'intensity', not {color_by!r}")
    if color_by == "intensity" and pts.shape[1] < 4:
        raise ValueError("color_by='intensity' needs a fourth point column")
    x_min, x_max, y_min, y_max = _extent(pts, gt, detections, xy_range)

    aspect = float(np.clip((y_max - y_min) / (x_max - x_min), 0.3, 3.0))  # figure follows the view's shape
    fig = plt.figure(figsize=(size_inches, size_inches * aspect), facecolor="black")
    ax = fig.add_axes([0.05, 0.05, 0.9, 0.9], facecolor="black")
    scatter, label = _draw_points(ax, pts, (x_min, x_max, y_min, y_max), color_by)

    _draw_rings(ax, x_min, x_max, y_min, y_max)
    ax.plot([0.0], [0.0], marker=(3, 0, -90), markersize=11, color="white", markeredgecolor="black", zorder=5)

    handles = []
    names = _class_names(gt, detections)
    if gt is not None and len(gt):
        corners = _corners(gt.boxes)
        for i in range(len(gt)):
            colour = class_colour(gt.class_names[gt.labels[i]], int(gt.labels[i]))
            style = "--" if gt.ignore[i] else "-"
            _draw_box(ax, corners[i], gt.boxes[i], colour, style, 1.3 if not gt.ignore[i] else 0.9)
    if detections is not None and len(detections):
        keep = np.nonzero(detections.scores >= min_score)[0]
        corners = _corners(detections.boxes[keep])
        annotate = len(keep) <= 150
        for k, i in enumerate(keep):
            colour = class_colour(detections.class_names[detections.labels[i]], int(detections.labels[i]))
            _draw_box(ax, corners[k], detections.boxes[i], colour, ":", 1.6)
            if annotate:
                x, y = corners[k][:, 0].max(), corners[k][:, 1].max()
                ax.text(x, y, f"{detections.scores[i]:.2f}", color=colour, fontsize=6, clip_on=True)
    for index, name in enumerate(names):
        handles.append(Line2D([], [], color=class_colour(name, index), lw=2, label=name))
    if gt is not None and len(gt):
        handles.append(Line2D([], [], color="white", lw=1.3, ls="-", label="ground truth"))
        if gt.ignore.any():
            handles.append(Line2D([], [], color="white", lw=0.9, ls="--", label="ignored (too few points)"))
    if detections is not None and len(detections):
        handles.append(Line2D([], [], color="white", lw=1.6, ls=":", label="detection (score)"))
    if handles:
        legend = ax.legend(handles=handles, loc="upper right", fontsize=8, facecolor="#202020", edgecolor="#606060")
        for text in legend.get_texts():
            text.set_color("white")

    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_aspect("equal")
    ax.tick_params(colors="#a0a0a0", labelsize=8)
    for spine in ax.spines.values():
        spine.set_color("#606060")
    ax.set_xlabel("x (m, forward)", color="#a0a0a0", fontsize=9)
    ax.set_ylabel("y (m, left)", color="#a0a0a0", fontsize=9)
    subtitle = f"{len(pts)} points"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, color="white", fontsize=11)
    colorbar_ax = ax.inset_axes([0.025, 0.06, 0.22, 0.012])  # inside the plot, whatever the figure's shape
    colorbar = fig.colorbar(scatter, cax=colorbar_ax, orientation="horizontal")
    colorbar.set_label(label, color="#c0c0c0", fontsize=8)
    colorbar.ax.xaxis.set_label_position("top")
    colorbar.ax.tick_params(colors="#c0c0c0", labelsize=7)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


@dataclass
class ComparisonPanel:
    """One frame of `render_comparison`: its points, both detectors' boxes and which of them matched."""

    points: np.ndarray
    reference: Detections
    candidate: Detections
    reference_matched: np.ndarray  # bool per reference box
    candidate_matched: np.ndarray  # bool per candidate box
    title: str = ""


def render_comparison(path, panels: list[ComparisonPanel], title: str = "", reference_name: str = "reference",
                      candidate_name: str = "candidate", panel_inches: float = 7.0, dpi: int = 110) -> None:
    """Write one PNG (atomically) with the panels side by side (2 x 2 from three on): in each, the points, the
    reference's boxes solid and the candidate's dotted in their class colours, reference boxes the candidate missed
    in thick red and candidate boxes without a reference in thick yellow."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not panels:
        raise ValueError("render_comparison needs at least one panel")
    columns = len(panels) if len(panels) <= 2 else 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_inches * columns, panel_inches * rows), facecolor="black",
                             squeeze=False)
    names: list[str] = []
    for ax, panel in zip(axes.flat, panels):
        pts = np.asarray(panel.points, np.float32)
        if pts.size == 0:
            pts = np.zeros((0, 4), np.float32)
        extent = _comparison_extent(pts, panel.reference, panel.candidate)
        ax.set_facecolor("black")
        _draw_points(ax, pts, extent, "height")
        _draw_rings(ax, *extent)
        ax.plot([0.0], [0.0], marker=(3, 0, -90), markersize=9, color="white", markeredgecolor="black", zorder=5)
        for boxes, matched, style, unmatched_colour in ((panel.reference, panel.reference_matched, "-", MISSED_COLOUR),
                                                        (panel.candidate, panel.candidate_matched, ":", EXTRA_COLOUR)):
            corners = _corners(boxes.boxes)
            for i in range(len(boxes)):
                name = boxes.class_names[boxes.labels[i]]
                if name not in names:
                    names.append(name)
                if matched[i]:
                    _draw_box(ax, corners[i], boxes.boxes[i], class_colour(name, int(boxes.labels[i])), style, 1.1)
                else:
                    _draw_box(ax, corners[i], boxes.boxes[i], unmatched_colour, style, 2.2)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.tick_params(colors="#a0a0a0", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#606060")
        ax.set_title(panel.title, color="white", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=class_colour(name, k), lw=2, label=name) for k, name in enumerate(names)]
    handles += [Line2D([], [], color="white", lw=1.1, ls="-", label=f"{reference_name} (matched)"),
                Line2D([], [], color="white", lw=1.1, ls=":", label=f"{candidate_name} (matched)"),
                Line2D([], [], color=MISSED_COLOUR, lw=2.2, ls="-", label=f"{reference_name} only: missed"),
                Line2D([], [], color=EXTRA_COLOUR, lw=2.2, ls=":", label=f"{candidate_name} only: extra")]
    legend = axes.flat[0].legend(handles=handles, loc="upper right", fontsize=7, facecolor="#202020",
                                 edgecolor="#606060")
    for text in legend.get_texts():
        text.set_color("white")
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def _comparison_extent(pts, *box_sets) -> tuple[float, float, float, float]:
    """The sensor, most points and every box being compared, on a 10 m grid (a front-only cloud is not padded
    behind the sensor; far boxes are not cut off)."""
    lows, highs = [np.zeros(2)], [np.zeros(2)]
    if len(pts):
        lows.append(np.percentile(pts[:, :2], 0.5, axis=0))
        highs.append(np.percentile(pts[:, :2], 99.5, axis=0))
    for boxes in box_sets:
        if len(boxes):
            lows.append(boxes.boxes[:, :2].min(axis=0) - 5.0)
            highs.append(boxes.boxes[:, :2].max(axis=0) + 5.0)
    low = np.maximum(np.floor(np.min(lows, axis=0) / 10.0) * 10.0 - 5.0, -150.0)
    high = np.minimum(np.ceil(np.max(highs, axis=0) / 10.0) * 10.0 + 5.0, 150.0)
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def _draw_points(ax, pts, extent, color_by: str):
    """Scatter the points inside `extent` coloured by height or intensity; (the scatter, its colour bar label)."""
    x_min, x_max, y_min, y_max = extent
    shown = pts[(pts[:, 0] >= x_min) & (pts[:, 0] <= x_max) & (pts[:, 1] >= y_min) & (pts[:, 1] <= y_max)]
    if color_by == "height":
        values, cmap, label = shown[:, 2], "turbo", "height (m)"
        lo, hi = (np.percentile(values, [2, 99.5]) if len(values) else (0.0, 1.0))
        lo -= 0.12 * (hi - lo)  # keep the ground out of turbo's near-black low end
    else:
        values, cmap, label = shown[:, 3], "inferno", "intensity"
        lo, hi = 0.0, max(float(np.percentile(values, 99.5)) if len(values) else 1.0, 1e-3)
    order = np.argsort(values, kind="stable")  # high values drawn last, so objects stand out over the ground
    # Marker area scaled to the view so a 150 m wide picture and a 40 m wide one both read well.
    marker = float(np.clip(0.9 * (160.0 / max(x_max - x_min, 1.0)) ** 2, 0.3, 8.0))
    scatter = ax.scatter(
        shown[order, 0], shown[order, 1], c=values[order], s=marker, cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-3),
        linewidths=0, marker=".", rasterized=True,
    )
    return scatter, label


def _class_names(gt, detections) -> tuple[str, ...]:
    names = []
    for source in (gt, detections):
        if source is not None:
            for name in source.class_names:
                if name not in names:
                    names.append(name)
    return tuple(names)


def _extent(pts, gt, detections, xy_range):
    if xy_range is None:
        xs = [np.abs(pts[:, :2]).reshape(-1)]
        for boxes in (gt, detections):
            if boxes is not None and len(boxes):
                xs.append(np.abs(boxes.boxes[:, :2]).reshape(-1) + 3.0)
        values = np.concatenate(xs)
        half = float(np.percentile(values, 99.5)) if len(values) else 50.0
        half = min(max(math.ceil(half / 10.0) * 10.0, 10.0), 150.0)
        return -half, half, -half, half
    if np.isscalar(xy_range):
        half = float(xy_range)
        if half <= 0:
            raise ValueError("xy_range half-width must be positive")
        return -half, half, -half, half
    x_min, x_max, y_min, y_max = (float(v) for v in xy_range)
    if x_min >= x_max or y_min >= y_max:
        raise ValueError(f"xy_range must be (x_min, x_max, y_min, y_max) with min < max; got {xy_range}")
    return x_min, x_max, y_min, y_max


def _draw_rings(ax, x_min, x_max, y_min, y_max) -> None:
    reach = max(abs(x_min), abs(x_max), abs(y_min), abs(y_max)) * math.sqrt(2)
    theta = np.linspace(0, 2 * np.pi, 361)
    radius = RING_STEP_M
    while radius <= reach:
        ax.plot(radius * np.cos(theta), radius * np.sin(theta), color="#5a5a5a", lw=0.6, ls=(0, (4, 4)), zorder=1)
        # Label where the ring crosses the view's lower-right diagonal, if visible.
        lx, ly = radius * math.cos(-math.pi / 4), radius * math.sin(-math.pi / 4)
        if x_min < lx < x_max and y_min < ly < y_max:
            ax.text(lx, ly, f"{radius:.0f} m", color="#8a8a8a", fontsize=7, ha="left", va="top")
        radius += RING_STEP_M


def _corners(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    lx = local[None, :, 0] * boxes[:, 3:4]
    ly = local[None, :, 1] * boxes[:, 4:5]
    x = boxes[:, 0:1] + lx * c[:, None] - ly * s[:, None]
    y = boxes[:, 1:2] + lx * s[:, None] + ly * c[:, None]
    return np.stack([x, y], axis=-1)


def _draw_box(ax, corners, box, colour, style, width) -> None:
    closed = np.vstack([corners, corners[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color=colour, lw=width, ls=style, zorder=4)
    # Heading tick: from the centre to the middle of the front edge.
    front = corners[[0, 3]].mean(axis=0)
    ax.plot([box[0], front[0]], [box[1], front[1]], color=colour, lw=width, ls="-", zorder=4)
