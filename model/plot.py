"""Training curves as a PNG: loss, validation BLEU and learning rate against step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "train_loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    fig, (loss_ax, bleu_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train (label-smoothed)")
    loss_ax.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="valid")
    loss_ax.set(title="loss", xlabel="step", ylabel="cross-entropy (nats/token)")
    loss_ax.legend()
    bleu_ax.plot([r["step"] for r in valid], [r["valid_bleu"] for r in valid], "o-", label="BLEU")
    bleu_ax.plot([r["step"] for r in valid], [r["valid_chrf"] for r in valid], "s-", label="chrF")
    bleu_ax.set(title="validation (greedy)", xlabel="step")
    bleu_ax.legend()
    lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    lr_ax.set(title="learning rate", xlabel="step")
    for ax in (loss_ax, bleu_ax, lr_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(png_path)
