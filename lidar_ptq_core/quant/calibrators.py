"""Activation range calibrators: statistics gathered over calibration batches -> amax of a per-tensor quantizer.

Statistics keep the exact maximum of |x| and a uniform random sample of |x| (a bounded number of values per batch,
seeded), from which the histogram methods work:
  max         amax = max |x|
  percentile  amax = the p-th percentile of |x| (TensorRT / pytorch-quantization style, p = 99.99 by default)
  entropy     TensorRT's KL-divergence calibration over a 2048-bin histogram of |x|
  mse         amax minimising the expected squared quantization error (rounding + clipping) over the histogram
Sites: `active_only` keeps the values of non-empty sites only (sparsity-based calibration); otherwise every site
counts, the zeros of the empty BEV canvas included, which is what naive calibrators see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .quantizer import QMAX

CALIBRATORS = ("max", "percentile", "entropy", "mse")


@dataclass
class ActivationStatistics:
    active_only: bool
    samples_per_batch: int = 20000
    seed: int = 0
    amax: float = 0.0
    channel_amax: torch.Tensor | None = None  # per input channel, for channel scaling
    num_values: int = 0
    num_sites: int = 0
    num_active_sites: int = 0
    _samples: list = field(default_factory=list, repr=False)

    def observe(self, values: torch.Tensor, channel_axis: int = -1, all_active: bool = False) -> None:
        """One batch of a layer's input: channels along channel_axis, a site at each position along the other axes;
        all_active: every site counts as non-empty (the active voxels of a sparse tensor)."""
        values = values.detach()
        channels = values.shape[channel_axis]
        if self.samples_per_batch:  # the histogram calibrators sample the values of the sites themselves
            rows = values.movedim(channel_axis, -1).reshape(-1, channels)
            active = (torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device) if all_active
                      else (rows != 0).any(dim=1))
            self.update(rows, active)
            return
        # Maxima only (max calibrator, channel ranges): an empty site is all zeros and adds nothing to a maximum of
        # |x|, so the maxima over every site equal those over the non-empty ones, with no rows copied or masked.
        # The same numbers as update(), at a third of the passes over the tensor.
        sites = values.numel() // max(channels, 1)
        magnitudes = values.abs()
        active = sites if all_active else int((magnitudes.amax(dim=channel_axis) > 0).sum()) if sites else 0
        self.num_sites += sites
        self.num_active_sites += active
        if sites == 0 or (self.active_only and active == 0):
            return
        other = tuple(d for d in range(values.dim()) if d != channel_axis % values.dim())
        channel = magnitudes.amax(dim=other).float().cpu()
        self.channel_amax = channel if self.channel_amax is None else torch.maximum(self.channel_amax, channel)
        self.amax = max(self.amax, float(channel.max()))
        self.num_values += active * channels if self.active_only else values.numel()

    def update(self, rows: torch.Tensor, active: torch.Tensor) -> None:
        rows = rows.detach()
        self.num_sites += int(rows.shape[0])
        self.num_active_sites += int(active.sum())
        if self.active_only:
            rows = rows[active]
        if rows.numel() == 0:
            return
        magnitudes = rows.abs()
        channel = magnitudes.amax(dim=0).float().cpu()
        self.channel_amax = channel if self.channel_amax is None else torch.maximum(self.channel_amax, channel)
        self.amax = max(self.amax, float(channel.max()))
        values = magnitudes.flatten()
        self.num_values += values.numel()
        if self.samples_per_batch == 0:  # the max calibrator and channel ranges need no samples
            return
        if values.numel() > self.samples_per_batch:
            generator = torch.Generator().manual_seed(self.seed + len(self._samples))
            index = torch.randint(values.numel(), (self.samples_per_batch,), generator=generator)
            values = values[index.to(values.device)]
        self._samples.append(values.float().cpu().numpy())

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._samples) if self._samples else np.zeros(0, np.float32)

    @property
    def active_fraction(self) -> float:
        return self.num_active_sites / max(self.num_sites, 1)


def histogram(samples: np.ndarray, amax: float, bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    counts, edges = np.histogram(samples, bins=bins, range=(0.0, max(amax, 1e-12)))
    return counts.astype(np.float64), edges


def amax_percentile(samples: np.ndarray, percentile: float = 99.99) -> float:
    if samples.size == 0:
        return 0.0
    return float(np.percentile(samples, percentile))


def amax_mse(samples: np.ndarray, amax: float, bins: int = 2048, candidates: int = 200) -> float:
    """The clip among `candidates` values in (0, amax] with the least expected squared error, rounding to the
    int8 grid inside the clip and clipping beyond it (|x| uses the QMAX positive levels)."""
    if samples.size == 0 or amax <= 0:
        return amax
    counts, edges = histogram(samples, amax, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    best, best_error = amax, np.inf
    for clip in np.linspace(amax / candidates, amax, candidates):
        step = clip / QMAX
        quantized = np.minimum(np.round(centres / step), QMAX) * step
        error = float(np.sum(counts * (centres - quantized) ** 2))
        if error < best_error:
            best, best_error = float(clip), error
    return best


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def amax_entropy(samples: np.ndarray, amax: float, bins: int = 2048, levels: int = QMAX + 1, stride: int = 8) -> float:
    """TensorRT's entropy calibration: for each candidate clip bin i, the reference distribution is the histogram
    cut at i with the outliers added to its last bin; the candidate is that histogram merged into `levels` bins and
    spread back over the non-empty bins of each; choose the clip with the least KL(reference || candidate)."""
    if samples.size == 0 or amax <= 0:
        return amax
    counts, edges = histogram(samples, amax, bins)
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1, stride):
        reference = counts[:i].copy()
        reference[-1] += counts[i:].sum()
        if reference.sum() == 0:
            continue
        candidate = np.zeros(i)
        groups = np.array_split(np.arange(i), levels)
        for group in groups:
            chunk = counts[group]  # without the outliers: those are what clipping loses
            nonzero = chunk > 0
            if nonzero.any():
                candidate[group[nonzero]] = chunk.sum() / nonzero.sum()
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        # A reference bin with mass where the candidate has none would be infinite KL: smooth those.
        q = np.where((p > 0) & (q == 0), 1e-12, q)
        kl = _kl_divergence(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(edges[best_i])


def compute_amax(statistics: ActivationStatistics, calibrator: str, percentile: float = 99.99) -> float:
    if calibrator == "max":
        return statistics.amax
    if calibrator == "percentile":
        return amax_percentile(statistics.samples, percentile)
    if calibrator == "entropy":
        return amax_entropy(statistics.samples, statistics.amax)
    if calibrator == "mse":
        return amax_mse(statistics.samples, statistics.amax)
    raise ValueError(f"unknown calibrator {calibrator!r}; expected one of {CALIBRATORS}")
