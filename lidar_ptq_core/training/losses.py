"""CenterPoint losses: penalty-reduced focal loss on the heatmap, L1 on the box regression at object centres."""

from __future__ import annotations

import torch


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss: positives are cells where the target is exactly 1; negatives near a centre are
    down-weighted by (1 - target)^beta so the Gaussian shoulder is not punished as hard as empty space."""
    prob = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos_loss = torch.log(prob) * (1 - prob).pow(alpha) * positive
    neg_loss = torch.log(1 - prob) * prob.pow(alpha) * (1 - target).pow(beta) * (1 - positive)
    num_pos = positive.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def gather_at_index(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature, (B, K) flat cell index -> (B, K, C)."""
    b, c = feature.shape[:2]
    flat = feature.reshape(b, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def regression_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                       code_weights: torch.Tensor) -> torch.Tensor:
    """pred/target (B, K, D), mask (B, K): mean L1 per object, each code dimension weighted."""
    diff = (pred.float() - target).abs() * mask.unsqueeze(-1)
    return (diff * code_weights).sum() / mask.sum().clamp(min=1.0)
