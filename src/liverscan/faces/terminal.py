"""Rich tables printed by the commands (terminal only; files are written elsewhere)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from liverscan.core.artifacts import SPLITS

if TYPE_CHECKING:  # the evaluation package imports scikit-learn: only the commands that evaluate pay for it
    from liverscan.evaluation import EvalMetrics, GroupLevel, OodResult, Scores


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
        grouping = summary["audit"].get("grouping")
        if grouping:
            console.print(
                f"{grouping['groups']} groups (images that always share a split or fold): {escape(grouping['rule'])}",
                highlight=False,
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


def overall_table(metrics: EvalMetrics) -> Table:
    """Overall metrics with 95% CIs; argmax, the operating point and the baseline (when present) side by side."""
    from liverscan.evaluation import overall_rows, result_variants

    variants = result_variants(metrics)
    boot = metrics.argmax.bootstrap
    left_out = metrics.leakage.excluded if metrics.leakage else 0
    table = Table(
        title=f"Overall ({metrics.split}, n={metrics.n}"
        + (f", {left_out} seen images left out" if left_out else "")
        + f"; {boot.describe(short=True) if boot else 'no CIs'})"
    )
    table.add_column("metric")
    for name, _ in variants:
        table.add_column(name, justify="right")
    for row in overall_rows(variants):
        table.add_row(*row)
    return table


def per_class_table(m: Scores, title: str) -> Table:
    from liverscan.evaluation import per_class_rows

    table = Table(title=title)
    for col in ("class", "precision", "recall", "specificity", "F1", "ROC-AUC", "n"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in per_class_rows(m):
        table.add_row(*row)
    return table


def confusion_table(m: Scores, classes: list[str], title: str) -> Table:
    from liverscan.evaluation import confusion_rows

    table = Table(title=title)
    table.add_column("true \\ predicted")
    for c in classes:
        table.add_column(c, justify="right")
    for row in confusion_rows(m, classes):
        table.add_row(*row)
    return table


def _per_fold_line(spread: dict[str, dict[str, float]]) -> str:
    return f"Per fold (mean ± sd over {spread['accuracy']['n_folds']} folds): " + ", ".join(
        f"{k.replace('_', ' ')} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in spread.items()
    )


def _group_level_lines(gl: GroupLevel) -> list[str]:
    """One line per decision rule (argmax, operating point) with one case per patient (or group)."""
    from liverscan.evaluation import format_with_ci

    unit = "patient" if gl.kind == "patients" else "group"
    keys = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro ROC-AUC", "macro_roc_auc"))
    lines = []
    for name, m in (("argmax", gl.argmax), ("operating point", gl.tuned)):
        if m is None:
            continue
        cells = ", ".join(f"{label} {format_with_ci(m.value(k), m.ci(k))}" for label, k in keys)
        lines.append(
            f"Per {unit} ({gl.n_groups} {gl.kind}, {gl.rule} of their images, {name}; 95% CI over {gl.kind}): {cells}"
        )
    return lines


def print_evaluation(metrics: EvalMetrics, console: Console) -> None:
    """What ``evaluate`` found: overall, per class, per fold, confusion, guard, operating point, per patient."""
    from liverscan.evaluation import format_value

    console.print(overall_table(metrics))
    classes = metrics.classes
    console.print(per_class_table(metrics.argmax, "Per class (argmax)"))
    if metrics.argmax.per_fold:
        console.print(_per_fold_line(metrics.argmax.per_fold), highlight=False)
    console.print(confusion_table(metrics.argmax, classes, "Confusion matrix (argmax)"))
    if metrics.ood:
        console.print(ood_table(metrics.ood))
    if metrics.tuned:
        op = metrics.operating_point
        if op:
            console.print(f"Operating point {op.spec!r}: {op.description}; temperature {format_value(op.temperature)}")
        console.print(per_class_table(metrics.tuned, "Per class (operating point)"))
        console.print(confusion_table(metrics.tuned, classes, "Confusion matrix (operating point)"))
    if metrics.group_level:
        for line in _group_level_lines(metrics.group_level):
            console.print(line, highlight=False)
    print_localisation(metrics, console)


def print_localisation(metrics: EvalMetrics, console: Console) -> None:
    """The lesion maps against the outlines, beside the baselines (the report's table); nothing without them."""
    loc = metrics.localisation
    if loc is None:
        return
    header, rows = loc.table()
    table = Table(
        title=f"Lesion localisation ({loc.n_outlined} outlined, {loc.n_lesion_free} lesion-free images; "
        f"{loc.level:.0%} CI over {loc.resampled})"
    )
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    header, rows = loc.size_table()
    if rows:
        sizes = Table(title="Lesion localisation by lesion size (quartiles)")
        for i, col in enumerate(header):
            sizes.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            sizes.add_row(*row)
        console.print(sizes)
    console.print(escape(loc.describe()), highlight=False, soft_wrap=True)
    if loc.skipped:
        console.print(
            f"[yellow]note:[/] {len(loc.skipped)} image(s) left out, their annotation unreadable: "
            + escape("; ".join(f"{p}: {r}" for p, r in loc.skipped[:3])),
            highlight=False,
            soft_wrap=True,
        )


def ood_table(ood: OodResult) -> Table:
    """In-distribution rate and metrics on all images vs the in-distribution subset, per source."""
    from liverscan.evaluation import format_value

    table = Table(
        title=f"Out-of-distribution guard: {ood.n_out_of_distribution} flagged, "
        f"in-distribution rate {format_value(ood.in_distribution_rate)}"
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
    if not ood.per_source:  # one row for every image (a cross-validated evaluation has no sources)
        a, i = ood.all, ood.in_distribution
        n = a.n if a else (i.n if i else 0) + ood.n_out_of_distribution  # older metrics have no "all"
        table.add_row(
            "all",
            str(n),
            format_value(ood.in_distribution_rate),
            format_value(a.accuracy if a else None),
            format_value(i.accuracy if i else None),
            format_value(a.macro_roc_auc if a else None),
            format_value(i.macro_roc_auc if i else None),
        )
    for row in ood.per_source:
        a, i = row.all, row.in_distribution
        table.add_row(
            escape(row.source),
            str(row.n),
            format_value(row.in_distribution_rate),
            format_value(a.accuracy if a else None),
            format_value(i.accuracy if i else None),
            format_value(a.macro_roc_auc if a else None),
            format_value(i.macro_roc_auc if i else None),
        )
    return table


def fit_path(path: str, width: int, folders: int = 0) -> str:
    """``path`` in ``width`` cells where it can be: the file name whole, as many of the folders nearest to it as
    fit (at least ``folders`` of them), the rest shown as "…" ("…/image/12.jpg"); longer than ``width`` rather
    than a name cut."""
    if cell_len(path) <= width:
        return path
    cuts = [i for i, ch in enumerate(path) if ch in "/\\" and i > 0]
    for i in cuts[: max(len(cuts) - folders, 0)]:  # the longest tail first
        if cell_len("…" + path[i:]) <= width:
            return "…" + path[i:]
    return "…" + path[cuts[-1 - folders] :] if len(cuts) > folders else path


#: columns whose cells wrap onto two lines at most, at their best split (a lesion cell once took four lines)
TWO_LINES = ("lesion",)


def _two_lines(text: str) -> int:
    """The narrowest width at which ``text`` wraps onto two lines at most (at a space)."""
    cuts = [i for i, ch in enumerate(text) if ch == " "]
    return min([cell_len(text)] + [max(cell_len(text[:i]), cell_len(text[i + 1 :])) for i in cuts])


def _least(headers: list[str], plain: list[list[str]]) -> list[int]:
    """Each column's narrowest width: its header whole, its longest word (two lines for :data:`TWO_LINES`)."""
    out = []
    for k, h in enumerate(headers):
        cells = [_two_lines(r[k]) if h in TWO_LINES else max([0] + [cell_len(w) for w in r[k].split()]) for r in plain]
        out.append(max([cell_len(h)] + cells))
    return out


def _results_table(
    title: str,
    first: str,
    names: list[tuple[str, str]],
    layouts: list[tuple[list[str], list[list[str]]]],
    width: int | None,
) -> Table:
    """The prediction and study tables: a name column (``names``: a path and a literal suffix each), then columns
    ``headers`` over ``rows`` of the first of ``layouts`` (``(headers, rows)``, widest first) that fits a
    ``width``-cell terminal with the names' file names and folders, else the last.  The paths get what the other
    columns leave, and at least their file name and its folder ("…/image/12.jpg"): :func:`fit_path` shortens the
    folders, never a file name; no header is ever cut."""
    table = Table(title=title)
    shown = [path + suffix for path, suffix in names]
    headers, rows = layouts[0]
    fits = False
    if width is not None and names:
        wanted = max(cell_len(fit_path(p, 0, folders=1) + x) for p, x in names)  # a name and its folder
        for headers, rows in layouts:
            plain = [[Text.from_markup(c).plain for c in r] for r in rows]
            lowest = _least(headers, plain)
            borders = 3 * len(headers) + 4
            if sum(lowest) + borders + wanted <= width:
                break
        natural = [max([cell_len(h)] + [cell_len(r[k]) for r in plain]) for k, h in enumerate(headers)]
        room = min(max(width - borders - sum(natural), wanted), width - borders - sum(lowest))
        shown = [fit_path(p, room - cell_len(x), folders=0) + x for p, x in names]
        fits = all(cell_len(t) <= room for t in shown)
    table.add_column(first, overflow="fold", no_wrap=fits)  # a fitted column stays whole; the others wrap
    for name in headers:
        table.add_column(name, justify="left" if name in ("decision", "review") else "right", min_width=cell_len(name))
    for text, cells in zip(shown, rows):
        table.add_row(Text(text), *cells)
    return table


def _narrow(headers: list[str], rows: list[list[str]], classes: list[str]) -> tuple[list[str], list[list[str]]]:
    """The layout for a narrow terminal: the confidence beside the decision, without the per-class probability
    columns (the output files keep them)."""
    drop = {headers.index(h) for h in ("confidence", *[f"p({c})" for c in classes])}
    k = headers.index("confidence")
    narrow = []
    for r in rows:
        cells = list(r)
        if cells[k]:
            cells[0] = f"{cells[0]} {cells[k]}"
        narrow.append([c for i, c in enumerate(cells) if i not in drop])
    return [h for i, h in enumerate(headers) if i not in drop], narrow


def predictions_table(records: list, classes: list[str], total: int, width: int | None = None) -> Table:
    """File, decision, confidence, per-class probabilities, where the lesion is (a model with a lesion head) and
    review flag (first rows only for big runs); ``width``: the terminal's, to shorten folders (never names)."""
    title = "Predictions" + (f" (first {len(records)} of {total})" if total > len(records) else "")
    lesion = any(getattr(r, "lesion", None) is not None for r in records)
    headers = ["decision", "confidence", *[f"p({c})" for c in classes], *(["lesion"] if lesion else []), "review"]
    names, rows = [], []
    for r in records:
        names.append((r.path, f" [frame {r.frame}]" if r.frame else ""))
        if r.error:
            rows.append(["[red]error[/]", "", *[""] * (len(classes) + lesion), escape(r.error)])
            continue
        outside = r.in_distribution is False
        rows.append(
            [
                "[red]out of distribution[/]" if outside else escape(r.predicted_class),
                f"{r.confidence:.3f}",
                *[f"{r.probabilities[c]:.3f}" for c in classes],
                *([lesion_cell(r.lesion)] if lesion else []),
                "[yellow]yes[/]" + (f" ({escape(r.ood_reason)})" if outside and r.ood_reason else "")
                if r.needs_review
                else "",
            ]
        )
    return _results_table(title, "file", names, [(headers, rows), _narrow(headers, rows, classes)], width)


def lesion_cell(finding) -> str:
    """Where the lesion head points, in a short table cell: the map's peak probability and where (image pixels;
    "faint" when only the classifier's gate made it a finding), none, or "not a finding" (out of distribution)."""
    if finding is None:
        return ""
    if finding.withheld is not None:
        return "not a finding"
    if not finding.found:
        return f"none (max {finding.probability:.2f})"
    x, y = finding.peak
    faint = " faint" if finding.gated else ""
    return f"{finding.probability:.2f}{faint} @ {x:.0f},{y:.0f}" + (
        f" +{finding.count - 1}" if finding.count > 1 else ""
    )


def ood_summary(n_outside: int, n_predicted: int) -> str | None:
    """What to tell a user when some images look unlike the model's training data (None when none do)."""
    if not n_outside:
        return None
    return (
        f"{n_outside} of {n_predicted} images look unlike this model's training data (another scanner, a "
        "screenshot, not an ultrasound?): their results are unreliable and marked out_of_distribution. "
        "For images from your own scanners, train on them: liverscan prepare + liverscan train."
    )


def studies_table(studies: list, classes: list[str], limit: int = 200, width: int | None = None) -> Table:
    """One row per study: decision, confidence, probabilities, frames used / failed / out of distribution."""
    shown = studies[:limit]
    title = "Studies" + (f" (first {len(shown)} of {len(studies)})" if len(studies) > len(shown) else "")
    headers = ["decision", "confidence", *[f"p({c})" for c in classes], "frames (failed, outside)", "review"]
    names, rows = [], []
    for s in shown:
        names.append((s.group, ""))
        frames = f"{s.n_frames} ({s.n_failed}, {s.n_out_of_distribution})"
        if s.error:
            rows.append(["[red]error[/]", "", *[""] * len(classes), frames, escape(s.error)])
            continue
        outside = s.decision == "out_of_distribution"
        rows.append(
            [
                "[red]out of distribution[/]" if outside else escape(s.predicted_class),
                f"{s.confidence:.3f}",
                *[f"{s.probabilities[c]:.3f}" for c in classes],
                frames,
                "[yellow]yes[/]" if s.needs_review else "",
            ]
        )
    return _results_table(title, "group", names, [(headers, rows), _narrow(headers, rows, classes)], width)


def print_predict_summary(
    console: Console, err_console: Console, summary, classes: list[str], shown: list | None, group_by: str | None
) -> None:
    """After ``predict``: left-out files, the prediction table (``shown``: its rows, None for no table), one
    summary line, the out-of-distribution warning, and the studies."""
    say = functools.partial(err_console.print, highlight=False, soft_wrap=True)
    if summary.skipped.total:
        say(f"[yellow]note:[/] {escape(summary.skipped.summary())}")
    if shown is not None:
        console.print(predictions_table(shown, classes, summary.records, console.width))
    decisions = ", ".join(f"{c}: {n}" for c, n in sorted(summary.decisions.items()))
    err_console.print(
        escape(f"{summary.predicted} of {summary.records} images predicted ({decisions or 'none'})")
        + (f"; {summary.failed} failed" if summary.failed else "")
        + (f"; wrote {escape(str(summary.output))}" if summary.output else ""),
        highlight=False,
    )
    for text in summary.notes:
        say(f"[yellow]note:[/] {escape(text)}")
    warning = ood_summary(summary.outside, summary.predicted)
    if warning:
        say(f"[bold yellow]warning:[/] {escape(warning)}")
    if summary.studies is None:
        return
    if shown is not None:
        console.print(studies_table(summary.studies, classes, width=console.width))
    review = sum(s.needs_review for s in summary.studies)
    err_console.print(
        f"{len(summary.studies)} {'study' if len(summary.studies) == 1 else 'studies'} by {escape(str(group_by))} "
        f"({summary.group_rule} of their frames); "
        f"{review} need review" + (f"; wrote {escape(str(summary.study_output))}" if summary.study_output else ""),
        highlight=False,
    )
