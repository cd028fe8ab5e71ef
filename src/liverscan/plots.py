"""Figures (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    """Save atomically as PNG and close."""
    import io

    from liverscan.fileio import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    write_bytes_atomic(path, buf.getvalue())


def training_curves(history: list[dict], path: str | Path) -> None:
    """Accuracy and loss, training vs validation, per epoch (like the paper's Figure 4)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in history]
    for ax, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [r[key] for r in history], label="training", color="#1f77b4")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation", color="#d62728")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    stages = [r["stage"] for r in history]
    if "fine_tune" in stages:
        start = epochs[stages.index("fine_tune")]
        for ax in axes:
            ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(start - 0.3, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8, color="grey")
    if history:
        best = max(history, key=lambda r: r["val_accuracy"])
        axes[0].scatter([best["epoch"]], [best["val_accuracy"]], color="#d62728", zorder=5)
        axes[0].annotate(f"best {best['val_accuracy']:.3f} @ {int(best['epoch'])}", (best["epoch"], best["val_accuracy"]),
                         textcoords="offset points", xytext=(5, -12), fontsize=8)
    fig.suptitle("Training curves")
    save_figure(fig, path)
