"""The optimizer side of a training step: AdamW, the learning-rate schedule, gradient scaling
(fp16 on CUDA) and clipping, saved and restored together for an exact resume."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from model.train_config import TrainConfig


def inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1, then decay as 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the matrices only: biases, norms and embeddings are not decayed."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if _decayed(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not _decayed(n, p)], "weight_decay": 0.0}]


def _decayed(name: str, parameter: torch.nn.Parameter) -> bool:
    return parameter.dim() > 1 and "embedding" not in name


class Optimization:
    """AdamW with its schedule and gradient scaler; one `step` per optimizer step."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: torch.device) -> None:
        self.clip_norm = config.clip_norm
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                           betas=config.betas, fused=device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: inverse_sqrt(step, config.warmup_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.amp)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Clip the accumulated gradients, update the weights, and advance the schedule."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
