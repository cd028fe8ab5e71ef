"""Rich tables printed by the commands (terminal only; files are written elsewhere)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from liverscan.split import SPLITS


def counts_table(counts: dict[str, dict[str, int]], title: str = "Images per class and split") -> Table:
    """Class x split counts with row percentages, like the paper's dataset table."""
    table = Table(title=title)
    table.add_column("class")
    for s in SPLITS:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    totals = {s: 0 for s in SPLITS}
    for cls, row in counts.items():
        n = sum(row.values())
        cells = []
        for s in SPLITS:
            totals[s] += row[s]
            pct = 100.0 * row[s] / n if n else 0.0
            cells.append(f"{row[s]} ({pct:.1f}%)")
        table.add_row(cls, *cells, str(n))
    grand = sum(totals.values())
    table.add_row(
        "[bold]all[/]",
        *[f"{totals[s]} ({100.0 * totals[s] / grand:.1f}%)" if grand else "0" for s in SPLITS],
        str(grand),
    )
    return table


def print_prepare_summary(summary: dict, out: Path, console: Console | None, err: Console) -> None:
    if console is not None:
        console.print(counts_table(summary["counts"]))
        weights = ", ".join(f"{c} {w:.3f}" for c, w in summary["class_weights"].items())
        console.print(f"Class weights (train): {weights}")
        console.print(
            f"{summary['n_images']} images kept, {summary['n_rejected']} rejected "
            f"({', '.join(f'{k}: {v}' for k, v in summary['reject_reasons'].items()) or 'none'}), "
            f"{len(summary['exact_duplicates_removed'])} exact duplicates removed"
        )
        sc = summary["audit"].get("shortcut")
        if sc:
            console.print(
                f"Shortcut check (width, height, aspect, mean intensity): balanced accuracy "
                f"{sc['balanced_accuracy']:.3f} vs majority baseline {sc['baseline_balanced_accuracy']:.3f}"
            )
        console.print(f"Manifest hash {summary['manifest_hash'][:16]}…  written to {out}")
    for w in summary["warnings"]:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
