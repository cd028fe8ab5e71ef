"""``report``: a run directory rendered as self-contained HTML and Markdown.

One document model (sections of paragraphs, tables and figures) is rendered twice:
``report.html`` embeds the figures (base64 PNG, no external files) and
``report.md`` links them relative to the run directory.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverscan.core.artifacts import (
    CARD_FILE,
    CURVES_FILE,
    METRICS_FILE,
    REPORT_HTML,
    REPORT_MD,
    SUMMARY,
    ModelCard,
    claim_out_dir,
    eval_dir_name,
    read_card,
    read_history,
)
from liverscan.core.errors import RunDirError
from liverscan.core.fileio import write_csv_atomic, write_text_atomic
from liverscan.evaluation.localisation import LocalisationMetrics
from liverscan.evaluation.results import EvalMetrics, GroupLevel, Scores, format_value, format_with_ci

#: The published method's test-set figures (a different, unreleased dataset of 2,025 images).
PAPER: dict[str, Any] = {
    "source": "published MobileNetV2 method (test split of its own 2,025-image, 3-class dataset)",
    "accuracy": 0.8961,
    "weighted_precision": 0.9203,
    "weighted_recall": 0.8961,
    "weighted_f1": 0.9045,
    "macro_roc_auc": 0.974,
    "normal_roc_auc": 0.944,
    "normal_precision": 0.49,
}


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("p", text) | ("table", header, rows) | ("img", path, caption)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, header: list[str], rows: list[list]) -> Section:
        self.blocks.append(("table", header, rows))
        return self

    def img(self, path: Path, caption: str) -> Section:
        if path.is_file():
            self.blocks.append(("img", path, caption))
        return self


#: Overall metrics shown in reports and terminal tables: (label, value getter, bootstrap CI key).
OVERALL_METRICS: list[tuple[str, Callable[[Scores], float | None], str | None]] = [
    ("accuracy", lambda s: s.accuracy, "accuracy"),
    ("balanced accuracy", lambda s: s.balanced_accuracy, "balanced_accuracy"),
    ("macro ROC-AUC", lambda s: s.macro.roc_auc, "macro_roc_auc"),
    ("weighted precision", lambda s: s.weighted.precision, None),
    ("weighted recall", lambda s: s.weighted.recall, None),
    ("weighted F1", lambda s: s.weighted.f1, None),
    ("macro F1", lambda s: s.macro.f1, None),
    ("ECE (15 bins)", lambda s: s.calibration.ece, None),
    ("Brier score", lambda s: s.calibration.brier, None),
]


def overall_cells(m: Scores, digits: int = 3) -> list[str]:
    """One formatted cell per OVERALL_METRICS row: value, with its 95% CI where there is one."""
    return [format_with_ci(get(m), m.ci(key) if key else None, digits) for _, get, key in OVERALL_METRICS]


def result_variants(m: EvalMetrics, baseline: bool = True) -> list[tuple[str, Scores]]:
    """The decisions evaluated, by name: argmax, the operating point, and (``baseline``) the baseline."""
    variants = [("argmax", m.argmax)] + ([("operating point", m.tuned)] if m.tuned else [])
    if baseline and m.baseline:
        variants.append((m.baseline.name or "linear probe", m.baseline))
    return variants


def overall_rows(variants: Sequence[tuple[str, Scores]]) -> list[list[str]]:
    """One row per OVERALL_METRICS entry: its label, then one cell per variant."""
    columns = [overall_cells(s) for _, s in variants]
    return [[label] + [col[i] for col in columns] for i, (label, _, _) in enumerate(OVERALL_METRICS)]


PER_CLASS_COLUMNS = ["class", "precision", "recall", "specificity", "F1", "ROC-AUC", "support"]


def per_class_rows(m: Scores) -> list[list[str]]:
    """Per class: precision, recall, specificity and ROC-AUC with their 95% CIs, F1, support."""
    return [
        [
            c,
            format_with_ci(v.precision, m.ci(f"{c}.precision")),
            format_with_ci(v.recall, m.ci(f"{c}.recall")),
            format_with_ci(v.specificity, m.ci(f"{c}.specificity")),
            format_value(v.f1),
            format_with_ci(v.roc_auc, m.ci(f"{c}.roc_auc")),
            str(v.support),
        ]
        for c, v in m.per_class.items()
    ]


def confusion_rows(m: Scores, classes: list[str]) -> list[list[str]]:
    """The confusion matrix as rows: true class, then ``count (row %)`` per predicted class."""
    return [
        [c] + [f"{n} ({100 * p:.0f}%)" for n, p in zip(counts, pct)]
        for c, counts, pct in zip(classes, m.confusion_matrix, m.confusion_matrix_normalized)
    ]


def group_level_section(gl: GroupLevel) -> Section:
    """Metrics with one case per patient (or near-duplicate group), beside the image-level ones."""
    patients = gl.kind == "patients"
    sec = Section(f"Results per {'patient' if patients else 'group'} (n={gl.n_groups})")
    boot = gl.argmax.bootstrap
    sec.p(
        f"Each {gl.kind[:-1] if patients else 'group'} is one case: its images' probabilities "
        f"aggregated by the {gl.rule} rule. "
        + (boot.describe(unit=gl.kind) + " " if boot else "")
        + (f"{gl.mixed_label_groups} group(s) hold images of several classes." if gl.mixed_label_groups else "")
    )
    variants = [("argmax", gl.argmax)] + ([("operating point", gl.tuned)] if gl.tuned else [])
    sec.table(["metric"] + [v for v, _ in variants], overall_rows(variants))
    return sec


def localisation_section(loc: LocalisationMetrics, eval_dir: Path) -> Section:
    """The lesion head's maps against the outlines, beside the baselines, and the best / median / worst cases."""
    sec = Section(f"Lesion localisation ({loc.n_outlined} outlined images, {loc.n_lesion_free} lesion-free)")
    sec.p(loc.describe())
    header, rows = loc.table()
    sec.table(header, rows)
    sec.p(
        "Pointing: the map's peak falls inside the true outline. Dice / IoU: the predicted mask against the "
        "outline at the image's own size. Heat in lesion: the share of the map's total inside the outline - "
        "a random point in the fan scores the lesion's share of the fan on both. False lesions: images of "
        "lesion-free classes with any region kept. Saliency maps (Grad-CAM) have no probability scale: pointing "
        "and heat only."
    )
    header, rows = loc.size_table()
    if rows:
        sec.p("By lesion size - the outline's share of the image, in quartiles (small lesions are where heads fail):")
        sec.table(header, rows)
    if loc.skipped:
        sec.p(
            f"{len(loc.skipped)} image(s) left out, their annotation unreadable: "
            + "; ".join(f"{p}: {r}" for p, r in loc.skipped[:5])
            + (" ..." if len(loc.skipped) > 5 else "")
        )
    if loc.figure:
        sec.img(eval_dir / loc.figure, "Best, median and worst image by Dice: true outline, predicted outline, map")
    return sec


def find_eval_dir(run: Path, eval_dir: Path | None = None) -> Path | None:
    if eval_dir is not None:
        return eval_dir if (eval_dir / METRICS_FILE).is_file() else None
    for name in (eval_dir_name("cv"), eval_dir_name("test"), eval_dir_name("val")):
        if (run / name / METRICS_FILE).is_file():
            return run / name
    found = sorted(run.glob(f"{eval_dir_name('*')}/{METRICS_FILE}"))
    return found[0].parent if found else None


def _summary_section(card: ModelCard) -> Section:
    return (
        Section("Summary")
        .p(f"**{card.intended_use}**")
        .p(
            f"Classes: {', '.join(card.classes)}. Model: {card.architecture['backbone']}; "
            f"head {card.architecture['head']}."
        )
    )


def _dataset_section(card: ModelCard) -> Section:
    ds = Section("Dataset")
    summary_path = Path(card.prepared_dir or "") / SUMMARY
    if not summary_path.is_file():
        return ds.p(
            f"Prepared dataset summary not found ({summary_path}); manifest hash {card.data['manifest_hash'][:16]}."
        )
    s = json.loads(summary_path.read_text())
    rows = []
    for c, r in s["counts"].items():
        n = sum(r.values())
        rows.append([c] + [f"{r[k]} ({100 * r[k] / n:.1f}%)" if n else "0" for k in ("train", "val", "test")] + [n])
    ds.p(
        f"Sources: {', '.join(s['sources'])}; {s['n_images']} images kept, {s['n_rejected']} rejected, "
        f"{len(s['exact_duplicates_removed'])} exact duplicates removed; manifest {s['manifest_hash'][:16]}."
    )
    ds.table(["class", "train", "val", "test", "total"], rows)
    ds.p("Class weights (training split): " + ", ".join(f"{c} {w:.3f}" for c, w in s["class_weights"].items()))
    if s.get("warnings"):
        ds.p("Audit warnings:")
        ds.table(["warning"], [[w] for w in s["warnings"]])
    return ds


def _training_rows(card: ModelCard) -> list[list[str]]:
    """The training settings table: weights, parameters, input, head, loss, mode, and what applies of the rest."""
    t, bw, params = card.training, card.backbone_weights, card.architecture["parameters"]
    weights = ", ".join(f"{c} {w:.3f}" for c, w in t["class_weights"].items())
    rows = [
        ["backbone weights", f"{bw['description']} ({bw['spec']})"],
        ["parameters", f"{params['total']:,} total, {params['trainable']:,} trainable"],
        ["input", f"{card.image_size}×{card.image_size}; {card.input.get('scaling', '')}"],
        ["head", card.architecture.get("head", "")],
        ["loss", f"{t['loss']} (class weights {weights})"],
        ["mode", f"{t['mode']}" + (f", {t['views']} augmented views per image" if t.get("views") else "")],
    ]
    if "optimizer" in t:
        rows.append(["optimizer / batch", f"{t['optimizer']}, batch {t['batch_size']}"])
    if t.get("C") is not None:
        rows.append(
            ["regularisation", f"C = {t['C']:.4g} (inner group cross-validation, {t.get('inner_folds')} folds)"]
        )
    if t.get("epochs_run"):
        rows.append(
            [
                "epochs",
                f"{t['epochs_run']} run (limit {t.get('epoch_limit')}), best epoch {t['best']['epoch']} "
                f"({t['best']['stage']}), early stop: {t.get('stopped_early')}",
            ]
        )
    rows.append(["time", f"{t['seconds']} s on {t['device']} ({t['backend']}), seed {t['seed']}"])
    rows.append(["versions", ", ".join(f"{k} {v}" for k, v in card.versions.items())])
    return rows


def _training_section(run: Path, card: ModelCard) -> Section:
    tr = Section("Training").table(["setting", "value"], _training_rows(card))
    cv = card.extra.get("cross_validation")
    if cv:
        tr.p(
            f"Cross-validated: {cv['folds']}-fold x {cv['repeats']} on {cv['images']} images in {cv['groups']} groups "
            f"(no group spans folds); final model: {cv['final_model']}."
        )
    try:
        hist = read_history(run)
        best = max(hist, key=lambda r: r["val_accuracy"])
        tr.p(f"Best validation accuracy {best['val_accuracy']:.4f} at epoch {int(best['epoch'])}.")
    except (FileNotFoundError, ValueError, KeyError):
        pass
    return tr.img(run / CURVES_FILE, "Training curves: accuracy and loss, training vs validation")


def _results_section(m: EvalMetrics, eval_dir: Path) -> Section:
    boot = m.argmax.bootstrap
    res = Section(f"Results ({m.split}, n={m.n})")
    res.p(f"Data: {m.data}" + (" (external: labelled images, not a prepared split)" if m.external else "") + ".")
    res.p(boot.describe() if boot else "No confidence intervals.")
    leak = m.leakage
    if leak:
        warning = leak.warning(m.n)
        if warning:
            res.p(f"**Warning: {warning}.**")
        if leak.checked:
            res.p(f"Checked for images the run has seen: {leak.checked}.")
    table_variants = result_variants(m)
    res.table(["metric"] + [v for v, _ in table_variants], overall_rows(table_variants))
    for name, s in result_variants(m, baseline=False):
        res.p(f"Per class ({name}):")
        res.table(PER_CLASS_COLUMNS, per_class_rows(s))
        res.table(["true \\ predicted"] + m.classes, confusion_rows(s, m.classes))
    res.img(eval_dir / "confusion.png", "Confusion matrix (argmax)")
    res.img(eval_dir / "confusion-tuned.png", "Confusion matrix (operating point)")
    return res.img(eval_dir / "roc.png", "One-vs-rest ROC curves")


def _calibration_section(m: EvalMetrics, eval_dir: Path) -> Section:
    c = m.argmax.calibration
    cal = Section("Calibration")
    cal.p(
        f"Expected calibration error {format_value(c.ece)}, Brier score {format_value(c.brier)}, "
        f"log-loss {format_value(c.log_loss)} (model probabilities)."
    )
    if m.tuned:
        op = m.operating_point
        temperature = format_value(op.temperature if op else None)
        if m.cross_validated:  # the tuned figures come from per-fold temperatures; the stored one is refit on all
            how = (
                "fitted nested, out of fold: each fold's predictions scaled by a temperature fitted on the other "
                f"folds; the stored T = {temperature} is fitted on all out-of-fold predictions"
            )
        else:  # what point_summary recorded (older metrics: where it came from is not known here)
            how = f"T = {temperature}, " + (op.fitted if op and op.fitted else "fitted on held-out predictions")
        cal.p(
            f"After temperature scaling ({how}): "
            f"ECE {format_value(m.tuned.calibration.ece)}, Brier {format_value(m.tuned.calibration.brier)}."
        )
    return cal.img(eval_dir / "reliability.png", "Reliability diagram")


def _operating_point_section(card: ModelCard) -> Section:
    op = Section("Operating point")
    o = card.operating_point
    if o is None:
        return op.p(
            'None fitted (argmax decisions). Fit one with: liverscan evaluate RUN --fit-operating-point "tumor>=0.95"'
        )
    fitted = o.fitted_on or {}
    return op.p(f"{o.spec}: {o.description}. Fitted on {fitted.get('data')} (n={fitted.get('n')}).")


def _paper_section(m: EvalMetrics) -> Section:
    am = m.argmax
    normal = am.per_class.get("normal")
    paper = Section("Published figures beside ours")
    paper.p(
        "The published numbers were measured on a different dataset (the paper's own 2,025 images, three "
        "classes); they are not a like-for-like comparison."
    )
    rows = [
        ["accuracy", PAPER["accuracy"], am.accuracy],
        ["weighted precision", PAPER["weighted_precision"], am.weighted.precision],
        ["weighted recall", PAPER["weighted_recall"], am.weighted.recall],
        ["weighted F1", PAPER["weighted_f1"], am.weighted.f1],
        ["macro ROC-AUC", PAPER["macro_roc_auc"], am.macro.roc_auc],
        ["normal ROC-AUC", PAPER["normal_roc_auc"], normal.roc_auc if normal else None],
        ["normal precision", PAPER["normal_precision"], normal.precision if normal else None],
    ]
    paper.table(
        ["metric", "published (its own data)", f"this run ({m.data})"],
        [[label, format_value(theirs), format_value(ours)] for label, theirs, ours in rows]
        + [["confidence intervals", "not reported", "95% bootstrap"]],
    )
    return paper


def build_sections(run: Path, eval_dir: Path | None) -> tuple[str, list[Section]]:
    """The report's title and sections: the run (summary, dataset, training), then its evaluation."""
    card = read_card(run)
    title = f"liverscan report: {card.name}"
    sections = [_summary_section(card), _dataset_section(card), _training_section(run, card)]
    if eval_dir is None:
        sections.append(Section("Results").p(f"No evaluation found. Run: liverscan evaluate {run}"))
        return title, sections
    m = EvalMetrics.read(eval_dir / METRICS_FILE)
    sections.append(_results_section(m, eval_dir))
    if m.group_level:
        sections.append(group_level_section(m.group_level))
    if m.localisation:
        sections.append(localisation_section(m.localisation, eval_dir))
    sections += [_calibration_section(m, eval_dir), _operating_point_section(card), _paper_section(m)]
    return title, sections


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                header, rows = b[1], b[2]
                out.append("| " + " | ".join(str(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            elif b[0] == "img":
                rel = (
                    Path(b[1]).resolve().relative_to(base.resolve())
                    if Path(b[1]).resolve().is_relative_to(base.resolve())
                    else b[1]
                )
                out += [f"![{b[2]}]({rel})", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;
border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.notice{background:#fff4e5;
border-left:4px solid #f0a020;padding:.5em 1em}"""


def _html_text(text: str) -> str:
    esc = html.escape(text)
    while "**" in esc:
        esc = esc.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
    return esc


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p class='notice'><strong>Research use only — not a medical device.</strong></p>",
    ]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if b[0] == "p":
                parts.append(f"<p>{_html_text(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
                )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, eval_dir: str | Path | None = None) -> tuple[Path, Path, list[Section]]:
    """Write ``report.html`` and ``report.md`` into the run directory."""
    run = Path(run_dir)
    if not (run / CARD_FILE).is_file():
        raise RunDirError(f"{run}: not a finished training run (no {CARD_FILE})")
    ev = find_eval_dir(run, Path(eval_dir) if eval_dir else None)
    title, sections = build_sections(run, ev)
    write_text_atomic(run / REPORT_MD, render_markdown(title, sections, run))
    write_text_atomic(run / REPORT_HTML, render_html(title, sections))
    return run / REPORT_HTML, run / REPORT_MD, sections


COMPARE_COLUMNS = [
    "run",
    "model",
    "classes",
    "data",
    "split",
    "n",
    "accuracy (95% CI)",
    "balanced accuracy (95% CI)",
    "macro ROC-AUC (95% CI)",
    "ECE",
    "train s",
]


def compare_rows(runs: Sequence[str | Path]) -> list[list]:
    """One row per run, each followed by its linear-probe baseline (same images, same resampling)."""
    rows: list[list] = []
    for r in runs:
        run = Path(r)
        card = read_card(run)
        ev = find_eval_dir(run)
        m = EvalMetrics.read(ev / METRICS_FILE) if ev else None
        head = {"linear": "linear probe", "mlp": "paper head (mlp)"}.get(card.build.get("head", "mlp"), "model")
        variants: list[tuple[str, Scores | None]] = [(head, m.argmax if m else None)]
        if m and m.baseline:
            variants.append((f"baseline: {m.baseline.name or 'linear probe'}", m.baseline))
        for name, s in variants:
            scores = ["-"] * 4
            if s is not None:
                keys = ("accuracy", "balanced_accuracy", "macro_roc_auc")
                scores = [format_with_ci(s.value(k), s.ci(k)) for k in keys] + [format_value(s.calibration.ece)]
            evaluated = [m.data, m.split, m.n] if m else ["-", "-", "-"]
            rows.append(
                [str(run), name, "/".join(card.classes), *evaluated, *scores, card.training.get("seconds", "-")]
            )
    return rows


#: what ``report --compare`` writes into its output folder
COMPARE_CSV, COMPARE_MD = "compare.csv", "compare.md"


def write_compare(runs: Sequence[str | Path], out_dir: str | Path) -> list[list]:
    """Write ``compare.csv`` and ``compare.md`` into ``out_dir``: a new or empty folder, or an earlier comparison
    (replaced); a folder holding a file liverscan did not write is refused, naming it."""
    out = Path(out_dir)
    claim_out_dir(out, (COMPARE_CSV, COMPARE_MD), "report --compare")
    rows = compare_rows(runs)
    write_csv_atomic(out / COMPARE_CSV, COMPARE_COLUMNS, rows)
    s = Section("Runs side by side").table(COMPARE_COLUMNS, rows)
    write_text_atomic(out / COMPARE_MD, render_markdown("liverscan run comparison", [s], out))
    return rows
