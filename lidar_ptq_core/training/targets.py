"""CenterPoint training targets: a Gaussian heatmap per class and box regression at each object's centre cell.

The regression vector per object is (dx, dy, z, log l, log w, log h, rot_a, rot_b), where dx, dy are the centre's
offset inside its feature-map cell and (rot_a, rot_b) is (cos, sin) or (sin, cos) of yaw, the order the head's decoder
is configured with.
"""

from __future__ import annotations

import numpy as np

from ..decode import HeadGeometry

REG_DIM = 8


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float) -> float:
    """CornerNet's bound: the largest centre displacement for which a box of this BEV size still overlaps its
    ground truth by `min_overlap` IoU, taken over the three ways the two corners can move."""
    h, w, o = length_cells, width_cells, min_overlap
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + np.sqrt(b1 * b1 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + np.sqrt(b2 * b2 - 16 * c2)) / 2
    b3, c3 = -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + np.sqrt(b3 * b3 - 16 * o * c3)) / 2
    return float(min(r1, r2, r3))


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Max-blend a Gaussian (sigma = diameter / 6) centred on integer cell (cx, cy) into heatmap (H, W)."""
    sigma = (2 * radius + 1) / 6.0
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[None, :] ** 2 + offsets[:, None] ** 2) / (2 * sigma * sigma)).astype(np.float32)
    height, width = heatmap.shape
    left, right = min(cx, radius), min(width - cx, radius + 1)
    top, bottom = min(cy, radius), min(height - cy, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    np.maximum(region, kernel[radius - top : radius + bottom, radius - left : radius + right], out=region)


def build_task_targets(
    boxes: np.ndarray,
    labels: np.ndarray,
    task_classes: list[int],
    geometry: HeadGeometry,
    max_objects: int = 256,
    min_radius: int = 2,
    min_overlap: float = 0.1,
    rot_order: str = "cos_sin",
) -> dict[str, np.ndarray]:
    """Targets of one head task for one frame.

    boxes (N, 7) and labels (N,) are global class indices; task_classes lists the global classes of this task, in the
    order of its heatmap channels. Returns heatmap (C, H, W), reg (max_objects, 8), index (max_objects,) flat cell
    index y * W + x, mask (max_objects,)."""
    heatmap = np.zeros((len(task_classes), geometry.height, geometry.width), np.float32)
    reg = np.zeros((max_objects, REG_DIM), np.float32)
    index = np.zeros(max_objects, np.int64)
    mask = np.zeros(max_objects, np.float32)
    channel_of = {c: i for i, c in enumerate(task_classes)}
    count = 0
    for box, label in zip(boxes, labels):
        if int(label) not in channel_of or count >= max_objects:
            continue
        x, y, z, length, width, height, yaw = (float(v) for v in box)
        fx, fy = (float(v) for v in geometry.metres_to_grid(x, y))  # the decoder's own inverse
        cx, cy = int(np.floor(fx)), int(np.floor(fy))
        if not (0 <= cx < geometry.width and 0 <= cy < geometry.height) or length <= 0 or width <= 0:
            continue
        radius = gaussian_radius(length / geometry.cell_x, width / geometry.cell_y, min_overlap)
        draw_gaussian(heatmap[channel_of[int(label)]], cx, cy, max(min_radius, int(radius)))
        rot = (np.cos(yaw), np.sin(yaw)) if rot_order == "cos_sin" else (np.sin(yaw), np.cos(yaw))
        reg[count] = (fx - cx, fy - cy, z, np.log(length), np.log(width), np.log(height), *rot)
        index[count] = cy * geometry.width + cx
        mask[count] = 1.0
        count += 1
    return {"heatmap": heatmap, "reg": reg, "index": index, "mask": mask}
