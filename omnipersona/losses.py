"""The joint OmniPersona objective: CE on answer tokens + flow MSE on generation targets + flow
MSE on editing targets, with configurable weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import OmniModel
from .sequence import LossKind, PackedSequence


@dataclass
class LossWeights:
    ce: float = 1.0
    gen: float = 1.0
    edit: float = 1.0


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; 0 when there are no answer tokens."""
    if labels.numel() == 0:
        return logits.sum() * 0
    return F.cross_entropy(logits.float(), labels)


def flow_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocity; 0 when there are no targets."""
    if target.numel() == 0:
        return pred.sum() * 0
    return F.mse_loss(pred.float(), target.float())


def joint_loss(
    model: OmniModel,
    seq: PackedSequence,
    concept_rows: torch.Tensor | None,
    concept_head_rows: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward over a packed batch -> (weighted total, loss parts as floats)."""
    hidden, _ = model(seq, concept_rows)
    logits = model.logits(hidden[seq.ce_index], concept_head_rows)
    ce = ce_loss(logits, seq.ce_labels)
    pred = model.velocity(hidden[seq.mse_index])
    is_gen = seq.mse_kind == LossKind.GENERATION
    gen = flow_loss(pred[is_gen], seq.mse_target[is_gen])
    edit = flow_loss(pred[~is_gen], seq.mse_target[~is_gen])
    total = weights.ce * ce + weights.gen * gen + weights.edit * edit
    return total, {"ce": ce.item(), "gen": gen.item(), "edit": edit.item(), "total": total.item()}
