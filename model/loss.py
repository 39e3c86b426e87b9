"""The training loss: label-smoothed cross-entropy over the real (non-padding) target tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.batching import Batch
from model.config import PAD_ID
from model.transformer import Transformer


def label_smoothed_loss(model: Transformer, batch: Batch, label_smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed loss over real target tokens, and their count.

    Only non-padding positions go through the output projection, the largest matmul.
    """
    hidden = model.forward_hidden(batch.source, batch.target_in)  # (B, T, D)
    real = batch.target_out != PAD_ID
    logits = model.logits(hidden[real])  # (N, V)
    loss = F.cross_entropy(logits.float(), batch.target_out[real], label_smoothing=label_smoothing, reduction="sum")
    return loss, int(real.sum())


class TrainingLoss(torch.nn.Module):
    """`label_smoothed_loss` as a module's forward.

    DistributedDataParallel prepares its gradient all-reduce in the forward of the module it
    wraps, and the loss calls `forward_hidden` and `logits`, not `Transformer.forward`.
    """

    def __init__(self, model: Transformer, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        return label_smoothed_loss(self.model, batch, self.label_smoothing)
