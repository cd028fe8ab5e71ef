"""Figures as PNG files, drawn with matplotlib's object API.

No pyplot state and no ``matplotlib.use``: a figure is a ``Figure`` rendered by
the Agg canvas directly, so a notebook user's backend is never switched.
"""

from __future__ import annotations

from pathlib import Path


def new_figure(figsize: tuple[float, float]):
    """A stand-alone figure bound to the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> None:
    """Save atomically as PNG."""
    import io

    from liverscan.core.fileio import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def training_curves(history: list[dict], path: str | Path) -> None:
    """Accuracy and loss, training vs validation, per epoch (like the paper's Figure 4)."""
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)
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
        axes[0].annotate(
            f"best {best['val_accuracy']:.3f} @ {int(best['epoch'])}",
            (best["epoch"], best["val_accuracy"]),
            textcoords="offset points",
            xytext=(5, -12),
            fontsize=8,
        )
    fig.suptitle("Training curves")
    save_figure(fig, path)


def confusion_figure(
    cm: list[list[int]], classes: list[str], path: str | Path, title: str = "Confusion matrix"
) -> None:
    """Counts and row percentages in each cell."""
    import numpy as np

    cm_arr = np.asarray(cm, dtype=float)
    rows = cm_arr.sum(1, keepdims=True)
    pct = np.divide(cm_arr, rows, out=np.zeros_like(cm_arr), where=rows > 0) * 100
    size = 1.3 + 1.1 * len(classes)
    fig = new_figure((size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{int(cm_arr[i, j])}\n{pct[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if pct[i, j] > 55 else "black",
                fontsize=10,
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    ax.set_title(title)
    save_figure(fig, path)


def roc_figure(y_true, probs, classes: list[str], per_class_auc: dict, macro_auc, path: str | Path) -> None:
    """One-vs-rest ROC curve per class with its AUC, and the macro AUC in the title."""
    import numpy as np
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true)
    fig = new_figure((5.5, 5))
    ax = fig.subplots()
    for i, c in enumerate(classes):
        if per_class_auc.get(c) is None:
            continue
        fpr, tpr, _ = roc_curve(y == i, np.asarray(probs)[:, i])
        ax.plot(fpr, tpr, label=f"{c} (AUC {per_class_auc[c]:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    macro = f"macro AUC {macro_auc:.3f}" if macro_auc is not None else "macro AUC n/a"
    ax.set_title(f"ROC, one-vs-rest ({macro})")
    if ax.get_legend_handles_labels()[0]:  # no class has both outcomes: no curve, no legend
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def reliability_figure(y_true, curves: dict, path: str | Path, n_bins: int = 15) -> None:
    """Top-label reliability diagram for each probability set in ``curves`` (name -> (probs, ece))."""
    import numpy as np
    from sklearn.calibration import calibration_curve

    y = np.asarray(y_true)
    fig = new_figure((5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, (probs, ece) in curves.items():
        probs = np.asarray(probs)
        conf = probs.max(1)
        correct = (probs.argmax(1) == y).astype(int)
        if len(np.unique(correct)) < 2:
            frac, mean = np.array([correct.mean()]), np.array([conf.mean()])
        else:
            frac, mean = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
        ax.plot(mean, frac, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
