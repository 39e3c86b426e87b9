"""Where training runs, and in which precision."""

from __future__ import annotations

import torch

from model.train_config import TrainConfig


class DeviceError(RuntimeError):
    """The device asked for is not there."""


def pick_device(name: str) -> torch.device:
    """The device `--device` names; "auto" is CUDA where torch sees it, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively. There bf16 autocast trains about 1.3x faster
    (bench/train_speed.py); elsewhere it is emulated and slower, so it stays off."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device: torch.device, config: TrainConfig) -> torch.autocast:
    """Mixed precision for the forward pass: bf16 (else fp16) on CUDA unless --no-amp, bf16 on
    CPU only with `cpu_bf16`."""
    if device.type == "cuda" and config.amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.cpu_bf16)
