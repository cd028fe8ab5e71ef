"""``report``: a run directory rendered as self-contained HTML and Markdown.

One document model (sections of paragraphs, tables and figures) is rendered twice:
``report.html`` embeds the figures (base64 PNG, no external files) and
``report.md`` links them relative to the run directory.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from liverscan.core.artifacts import (
    CARD_FILE,
    CURVES_FILE,
    METRICS_FILE,
    REPORT_HTML,
    REPORT_MD,
    SUMMARY,
    eval_dir_name,
    read_card,
    read_history,
)
from liverscan.core.errors import RunDirError
from liverscan.core.fileio import write_csv_atomic, write_text_atomic

#: The published method's test-set figures (a different, unreleased dataset of 2,025 images).
PAPER = {
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


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(m: dict, key: str) -> str:
    iv = (m.get("bootstrap") or {}).get("intervals", {}).get(key)
    return f" ({iv[0]:.3f}–{iv[1]:.3f})" if iv else ""


#: Overall metrics shown in reports and terminal tables: (label, value getter, bootstrap CI key).
OVERALL_METRICS = [
    ("accuracy", lambda m: m["accuracy"], "accuracy"),
    ("balanced accuracy", lambda m: m["balanced_accuracy"], "balanced_accuracy"),
    ("macro ROC-AUC", lambda m: m["macro"]["roc_auc"], "macro_roc_auc"),
    ("weighted precision", lambda m: m["weighted"]["precision"], None),
    ("weighted recall", lambda m: m["weighted"]["recall"], None),
    ("weighted F1", lambda m: m["weighted"]["f1"], None),
    ("macro F1", lambda m: m["macro"]["f1"], None),
    ("ECE (15 bins)", lambda m: m["calibration"]["ece"], None),
    ("Brier score", lambda m: m["calibration"]["brier"], None),
]


def overall_cells(m: dict, digits: int = 3) -> list[str]:
    """One formatted cell per OVERALL_METRICS row: value, with its 95% CI where there is one."""
    cells = []
    for _, get, ci_key in OVERALL_METRICS:
        v = get(m)
        iv = (m.get("bootstrap") or {}).get("intervals", {}).get(ci_key) if ci_key else None
        text = "n/a" if v is None else f"{v:.3f}"
        cells.append(text + (f" ({iv[0]:.{digits}f}–{iv[1]:.{digits}f})" if iv else ""))
    return cells


def group_level_section(gl: dict) -> Section:
    """Metrics with one case per patient (or near-duplicate group), beside the image-level ones."""
    sec = Section(f"Results per {'patient' if gl['kind'] == 'patients' else 'group'} (n={gl['n_groups']})")
    sec.p(
        f"Each {gl['kind'][:-1] if gl['kind'] == 'patients' else 'group'} is one case: its images' probabilities "
        f"aggregated by the {gl['rule']} rule; intervals from a bootstrap over {gl['kind']}. "
        + (f"{gl['mixed_label_groups']} group(s) hold images of several classes." if gl["mixed_label_groups"] else "")
    )
    variants = [("argmax", gl["argmax"])] + ([("operating point", gl["tuned"])] if "tuned" in gl else [])
    rows = [
        [label] + [cells[i] for cells in (overall_cells(x, 3) for _, x in variants)]
        for i, label in enumerate(label for label, _, _ in OVERALL_METRICS)
    ]
    sec.table(["metric"] + [v for v, _ in variants], rows)
    return sec


def find_eval_dir(run: Path, eval_dir: Path | None = None) -> Path | None:
    if eval_dir is not None:
        return eval_dir if (eval_dir / METRICS_FILE).is_file() else None
    for name in (eval_dir_name("cv"), eval_dir_name("test"), eval_dir_name("val")):
        if (run / name / METRICS_FILE).is_file():
            return run / name
    found = sorted(run.glob(f"{eval_dir_name('*')}/{METRICS_FILE}"))
    return found[0].parent if found else None


def build_sections(run: Path, eval_dir: Path | None) -> tuple[str, list[Section]]:
    card = read_card(run)
    t = card.training
    sections: list[Section] = []
    title = f"liverscan report: {card.name}"
    intro = (
        Section("Summary")
        .p(f"**{card.intended_use}**")
        .p(
            f"Classes: {', '.join(card.classes)}. Model: {card.architecture['backbone']}; "
            f"head {card.architecture['head']}."
        )
    )
    sections.append(intro)

    # dataset
    ds = Section("Dataset")
    summary_path = Path(card.prepared_dir or "") / SUMMARY
    if summary_path.is_file():
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
    else:
        ds.p(f"Prepared dataset summary not found ({summary_path}); manifest hash {card.data['manifest_hash'][:16]}.")
    sections.append(ds)

    # training
    tr = Section("Training")
    bw = card.backbone_weights
    tr.table(
        ["setting", "value"],
        [
            ["backbone weights", f"{bw['description']} ({bw['spec']})"],
            [
                "parameters",
                f"{card.architecture['parameters']['total']:,} total, "
                f"{card.architecture['parameters']['trainable']:,} trainable",
            ],
            ["input", f"{card.image_size}×{card.image_size}; {card.input.get('scaling', '')}"],
            ["head", card.architecture.get("head", "")],
            ["loss", f"{t['loss']} (class weights {', '.join(f'{c} {w:.3f}' for c, w in t['class_weights'].items())})"],
            ["mode", f"{t['mode']}" + (f", {t['views']} augmented views per image" if t.get("views") else "")],
        ]
        + ([["optimizer / batch", f"{t['optimizer']}, batch {t['batch_size']}"]] if "optimizer" in t else [])
        + (
            [["regularisation", f"C = {t['C']:.4g} (inner group cross-validation, {t.get('inner_folds')} folds)"]]
            if t.get("C") is not None
            else []
        )
        + (
            [
                [
                    "epochs",
                    f"{t['epochs_run']} run (limit {t.get('epoch_limit')}), best epoch {t['best']['epoch']} "
                    f"({t['best']['stage']}), early stop: {t.get('stopped_early')}",
                ]
            ]
            if t.get("epochs_run")
            else []
        )
        + [
            ["time", f"{t['seconds']} s on {t['device']} ({t['backend']}), seed {t['seed']}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in card.versions.items())],
        ],
    )
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
    tr.img(run / CURVES_FILE, "Training curves: accuracy and loss, training vs validation")
    sections.append(tr)

    if eval_dir is None:
        sections.append(Section("Results").p(f"No evaluation found. Run: liverscan evaluate {run}"))
        return title, sections
    m = json.loads((eval_dir / METRICS_FILE).read_text())
    am = m["argmax"]
    res = Section(f"Results ({m['split']}, n={m['n']})")
    res.p(
        f"Data: {m['data']}. Intervals are 95% bootstrap CIs "
        f"({(am.get('bootstrap') or {}).get('n_resamples', 0)} resamples of "
        f"{(am.get('bootstrap') or {}).get('resampled', 'images')})."
    )
    variants = [("argmax", am)] + ([("operating point", m["tuned"])] if "tuned" in m else [])
    table_variants = variants + (
        [(m["baseline"].get("name", "linear probe"), m["baseline"])] if m.get("baseline") else []
    )
    rows = [
        [label] + [cells[i] for cells in (overall_cells(x, 3) for _, x in table_variants)]
        for i, label in enumerate(label for label, _, _ in OVERALL_METRICS)
    ]
    res.table(["metric"] + [v for v, _ in table_variants], rows)
    for name, mm in variants:
        res.p(f"Per class ({name}):")
        res.table(
            ["class", "precision", "recall", "specificity", "F1", "ROC-AUC", "support"],
            [
                [
                    c,
                    _f(v["precision"]) + _ci(mm, f"{c}.precision"),
                    _f(v["recall"]) + _ci(mm, f"{c}.recall"),
                    _f(v["specificity"]),
                    _f(v["f1"]),
                    _f(v["roc_auc"]) + _ci(mm, f"{c}.roc_auc"),
                    v["support"],
                ]
                for c, v in mm["per_class"].items()
            ],
        )
        res.table(
            ["true \\ predicted"] + m["classes"],
            [
                [c] + [f"{n} ({100 * p:.0f}%)" for n, p in zip(cnt, pct)]
                for c, cnt, pct in zip(m["classes"], mm["confusion_matrix"], mm["confusion_matrix_normalized"])
            ],
        )
    res.img(eval_dir / "confusion.png", "Confusion matrix (argmax)")
    res.img(eval_dir / "confusion-tuned.png", "Confusion matrix (operating point)")
    res.img(eval_dir / "roc.png", "One-vs-rest ROC curves")
    sections.append(res)
    if m.get("group_level"):
        sections.append(group_level_section(m["group_level"]))

    cal = Section("Calibration")
    cal.p(
        f"Expected calibration error {_f(am['calibration']['ece'])}, Brier score {_f(am['calibration']['brier'])}, "
        f"log-loss {_f(am['calibration']['log_loss'])} (model probabilities)."
    )
    if "tuned" in m:
        cal.p(
            f"After temperature scaling (T = {m['operating_point']['temperature']:.3f}, fitted on validation): "
            f"ECE {_f(m['tuned']['calibration']['ece'])}, Brier {_f(m['tuned']['calibration']['brier'])}."
        )
    cal.img(eval_dir / "reliability.png", "Reliability diagram")
    sections.append(cal)

    op = Section("Operating point")
    if card.operating_point:
        o = card.operating_point
        op.p(f"{o['spec']}: {o['description']}. Fitted on {o['fitted_on']['data']} (n={o['fitted_on']['n']}).")
    else:
        op.p('None fitted (argmax decisions). Fit one with: liverscan evaluate RUN --operating-point "tumor>=0.95"')
    sections.append(op)

    paper = Section("Published figures beside ours")
    paper.p(
        "The published numbers were measured on a different dataset (the paper's own 2,025 images, three "
        "classes); they are not a like-for-like comparison."
    )
    normal = am["per_class"].get("normal", {})
    paper.table(
        ["metric", "published (its own data)", f"this run ({m['data']})"],
        [
            ["accuracy", _f(PAPER["accuracy"]), _f(am["accuracy"])],
            ["weighted precision", _f(PAPER["weighted_precision"]), _f(am["weighted"]["precision"])],
            ["weighted recall", _f(PAPER["weighted_recall"]), _f(am["weighted"]["recall"])],
            ["weighted F1", _f(PAPER["weighted_f1"]), _f(am["weighted"]["f1"])],
            ["macro ROC-AUC", _f(PAPER["macro_roc_auc"]), _f(am["macro"]["roc_auc"])],
            ["normal ROC-AUC", _f(PAPER["normal_roc_auc"]), _f(normal.get("roc_auc"))],
            ["normal precision", _f(PAPER["normal_precision"]), _f(normal.get("precision"))],
            ["confidence intervals", "not reported", "95% bootstrap"],
        ],
    )
    sections.append(paper)
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


def _with_ci(m: dict, key: str, value) -> str:
    iv = (m.get("bootstrap") or {}).get("intervals", {}).get(key)
    return _f(value) + (f" ({iv[0]:.3f}–{iv[1]:.3f})" if iv else "")


def compare_rows(runs: list[str | Path]) -> list[list]:
    """One row per run, each followed by its linear-probe baseline (same images, same resampling)."""
    rows = []
    for r in runs:
        run = Path(r)
        card = read_card(run)
        ev = find_eval_dir(run)
        m = json.loads((ev / METRICS_FILE).read_text()) if ev else None
        head = {"linear": "linear probe", "mlp": "paper head (mlp)"}.get(card.build.get("head", "mlp"), "model")
        variants = [(head, m["argmax"] if m else None)]
        if m and m.get("baseline"):
            variants.append((f"baseline: {m['baseline'].get('name', 'linear probe')}", m["baseline"]))
        for name, am in variants:
            rows.append(
                [
                    str(run),
                    name,
                    "/".join(card.classes),
                    m["data"] if m else "-",
                    m["split"] if m else "-",
                    m["n"] if m else "-",
                    _with_ci(am, "accuracy", am["accuracy"]) if am else "-",
                    _with_ci(am, "balanced_accuracy", am["balanced_accuracy"]) if am else "-",
                    _with_ci(am, "macro_roc_auc", am["macro"]["roc_auc"]) if am else "-",
                    _f(am["calibration"]["ece"]) if am else "-",
                    card.training.get("seconds", "-"),
                ]
            )
    return rows


def write_compare(runs: list[str | Path], out_dir: str | Path) -> list[list]:
    rows = compare_rows(runs)
    out = Path(out_dir)
    write_csv_atomic(out / "compare.csv", COMPARE_COLUMNS, rows)
    s = Section("Runs side by side").table(COMPARE_COLUMNS, rows)
    write_text_atomic(out / "compare.md", render_markdown("liverscan run comparison", [s], out))
    return rows
