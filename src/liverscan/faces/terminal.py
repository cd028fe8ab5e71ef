"""Rich tables printed by the commands (terminal only; files are written elsewhere)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from liverscan.core.artifacts import SPLITS


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
        console.print(f"Manifest hash {summary['manifest_hash'][:16]}…  written to {escape(str(out))}", highlight=False)
    left_out = summary.get("ignored_files") or {}
    if left_out:
        n = sum(left_out.values())
        err.print(
            f"[yellow]note:[/] {n} file{'s' if n != 1 else ''} in the sources left out ("
            + escape(", ".join(f"{reason}: {k}" for reason, k in left_out.items()))
            + ")",
            highlight=False,
            soft_wrap=True,
        )
    for w in summary["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


def _ci(m: dict, key: str) -> str:
    iv = m.get("bootstrap", {}).get("intervals", {}).get(key)
    return f" [{iv[0]:.2f}–{iv[1]:.2f}]" if iv else ""


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def overall_table(metrics: dict) -> Table:
    """Overall metrics with 95% CIs; argmax and (when present) tuned side by side."""
    variants = [("argmax", metrics["argmax"])] + ([("operating point", metrics["tuned"])] if "tuned" in metrics else [])
    if metrics.get("baseline"):
        variants.append((metrics["baseline"].get("name", "linear probe"), metrics["baseline"]))
    from liverscan.evaluation import OVERALL_METRICS, overall_cells

    resampled = (metrics["argmax"].get("bootstrap") or {}).get("resampled", "images")
    table = Table(title=f"Overall ({metrics['split']}, n={metrics['n']}; 95% bootstrap CI over {resampled})")
    table.add_column("metric")
    for name, _ in variants:
        table.add_column(name, justify="right")
    columns = [overall_cells(m, 2) for _, m in variants]
    for i, (label, _, _) in enumerate(OVERALL_METRICS):
        table.add_row(label, *[col[i] for col in columns])
    return table


def per_class_table(m: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("class", "precision", "recall", "specificity", "F1", "ROC-AUC", "n"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v in m["per_class"].items():
        table.add_row(
            c,
            _fmt(v["precision"]) + _ci(m, f"{c}.precision"),
            _fmt(v["recall"]) + _ci(m, f"{c}.recall"),
            _fmt(v["specificity"]),
            _fmt(v["f1"]),
            _fmt(v["roc_auc"]) + _ci(m, f"{c}.roc_auc"),
            str(v["support"]),
        )
    return table


def confusion_table(m: dict, classes: list[str], title: str) -> Table:
    table = Table(title=title)
    table.add_column("true \\ predicted")
    for c in classes:
        table.add_column(c, justify="right")
    for c, counts, pct in zip(classes, m["confusion_matrix"], m["confusion_matrix_normalized"]):
        table.add_row(c, *[f"{n} ({100 * p:.0f}%)" for n, p in zip(counts, pct)])
    return table


def print_evaluation(metrics: dict, console: Console) -> None:
    console.print(overall_table(metrics))
    classes = metrics["classes"]
    console.print(per_class_table(metrics["argmax"], "Per class (argmax)"))
    spread = metrics["argmax"].get("per_fold")
    if spread:
        console.print(
            "Per fold (mean ± sd over "
            + str(spread["accuracy"]["n_folds"])
            + " folds): "
            + ", ".join(f"{k.replace('_', ' ')} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in spread.items()),
            highlight=False,
        )
    console.print(confusion_table(metrics["argmax"], classes, "Confusion matrix (argmax)"))
    if metrics.get("ood"):
        console.print(ood_table(metrics["ood"]))
    if "tuned" in metrics:
        op = metrics["operating_point"]
        console.print(f"Operating point {op['spec']!r}: {op['description']}; temperature {op['temperature']:.3f}")
        console.print(per_class_table(metrics["tuned"], "Per class (operating point)"))
        console.print(confusion_table(metrics["tuned"], classes, "Confusion matrix (operating point)"))
    gl = metrics.get("group_level")
    if gl:
        unit = "patient" if gl["kind"] == "patients" else "group"
        for name in ("argmax", "tuned"):
            if name in gl:
                m, iv = gl[name], (gl[name].get("bootstrap") or {}).get("intervals", {})

                def cell(key: str, value) -> str:
                    ci = iv.get(key)
                    return _fmt(value) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")

                console.print(
                    f"Per {unit} ({gl['n_groups']} {gl['kind']}, {gl['rule']} of their images, "
                    f"{'operating point' if name == 'tuned' else 'argmax'}; 95% CI over {gl['kind']}): "
                    f"accuracy {cell('accuracy', m['accuracy'])}, balanced accuracy "
                    f"{cell('balanced_accuracy', m['balanced_accuracy'])}, macro ROC-AUC "
                    f"{cell('macro_roc_auc', m['macro']['roc_auc'])}",
                    highlight=False,
                )


def ood_table(ood: dict) -> Table:
    """In-distribution rate and metrics on all images vs the in-distribution subset, per source."""
    table = Table(
        title=f"Out-of-distribution guard: {ood['n_out_of_distribution']} flagged, "
        f"in-distribution rate {_fmt(ood['in_distribution_rate'])}"
    )
    for col in (
        "source",
        "n",
        "in-distribution rate",
        "accuracy (all)",
        "accuracy (in-distribution)",
        "macro AUC (all)",
        "macro AUC (in-distribution)",
    ):
        table.add_column(col)
    if not ood["per_source"]:
        i = ood.get("in_distribution") or {}
        table.add_row(
            "all",
            str(i.get("n", "")),
            _fmt(ood["in_distribution_rate"]),
            "",
            _fmt(i.get("accuracy")),
            "",
            _fmt(i.get("macro_roc_auc")),
        )
    for row in ood["per_source"]:
        a, i = row["all"] or {}, row["in_distribution"] or {}
        table.add_row(
            escape(row["source"]),
            str(row["n"]),
            _fmt(row["in_distribution_rate"]),
            _fmt(a.get("accuracy")),
            _fmt(i.get("accuracy")),
            _fmt(a.get("macro_roc_auc")),
            _fmt(i.get("macro_roc_auc")),
        )
    return table


def _results_table(title: str, first: str, classes: list[str], extra: list[str]) -> Table:
    """Columns shared by the prediction and study tables: name, decision, confidence, p(class)..., review."""
    table = Table(title=title)
    table.add_column(first, overflow="fold")
    table.add_column("decision")
    table.add_column("confidence", justify="right")
    for c in classes:
        table.add_column(f"p({c})", justify="right")
    for name in extra:
        table.add_column(name, justify="right")
    table.add_column("review")
    return table


def predictions_table(records: list, classes: list[str], total: int) -> Table:
    """File, decision, confidence, per-class probabilities and review flag (first rows only for big runs)."""
    title = "Predictions" + (f" (first {len(records)} of {total})" if total > len(records) else "")
    table = _results_table(title, "file", classes, [])
    for r in records:
        name = escape(r.path) + (f" \\[frame {r.frame}]" if r.frame else "")
        if r.error:
            table.add_row(name, "[red]error[/]", "", *[""] * len(classes), escape(r.error))
            continue
        outside = r.in_distribution is False
        table.add_row(
            name,
            "[red]out of distribution[/]" if outside else escape(r.predicted_class),
            f"{r.confidence:.3f}",
            *[f"{r.probabilities[c]:.3f}" for c in classes],
            "[yellow]yes[/]" + (f" ({escape(r.ood_reason)})" if outside and r.ood_reason else "")
            if r.needs_review
            else "",
        )
    return table


def ood_summary(n_outside: int, n_predicted: int) -> str | None:
    """What to tell a user when some images look unlike the model's training data (None when none do)."""
    if not n_outside:
        return None
    return (
        f"{n_outside} of {n_predicted} images look unlike this model's training data (another scanner, a "
        "screenshot, not an ultrasound?): their results are unreliable and marked out_of_distribution. "
        "For images from your own scanners, train on them: liverscan prepare + liverscan train."
    )


def studies_table(studies: list, classes: list[str], limit: int = 200) -> Table:
    """One row per study: decision, confidence, probabilities, frames used / failed / out of distribution."""
    shown = studies[:limit]
    title = "Studies" + (f" (first {len(shown)} of {len(studies)})" if len(studies) > len(shown) else "")
    table = _results_table(title, "group", classes, ["frames (failed, outside)"])
    for s in shown:
        frames = f"{s.n_frames} ({s.n_failed}, {s.n_out_of_distribution})"
        if s.error:
            table.add_row(escape(s.group), "[red]error[/]", "", *[""] * len(classes), frames, escape(s.error))
            continue
        outside = s.decision == "out_of_distribution"
        table.add_row(
            escape(s.group),
            "[red]out of distribution[/]" if outside else escape(s.predicted_class),
            f"{s.confidence:.3f}",
            *[f"{s.probabilities[c]:.3f}" for c in classes],
            frames,
            "[yellow]yes[/]" if s.needs_review else "",
        )
    return table
