"""The contract between commands: prepared-dataset and run-directory layouts, the model card, history.

Every file name another command reads is defined here and nowhere else.  A run
directory holds ``config.yaml``, ``run.json`` (status), ``model.keras`` (or a
packed ``weights.npz``), ``model_card.json`` / ``.md``, ``history.csv`` and the
training curves; evaluations go into ``eval-<split>/``.  A prepared dataset holds
``manifest.csv``, ``summary.json``, ``rejects.csv`` and the ``images.npy`` cache.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverscan.core.errors import ModelError, RunDirError
from liverscan.core.fileio import (
    read_csv,
    sha256_bytes,
    sha256_file,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:  # numpy stays out of the CLI's start-up
    from liverscan.core.operating_point import OperatingPoint

# ---- prepared dataset
MANIFEST = "manifest.csv"
SUMMARY = "summary.json"
REJECTS = "rejects.csv"
CACHE = "images.npy"
SPLITS = ("train", "val", "test")
#: the annotation file of each kind (lesion, liver, scan fan) per manifest row; empty: the image has none
ANNOTATION_COLUMNS = {"lesion": "lesion_annotation", "liver": "liver_annotation", "fan": "fan_annotation"}
MANIFEST_COLUMNS = [
    "path",
    "content_hash",
    "source",
    "source_label",
    "class",
    "split",
    "group",
    "width",
    "height",
    *ANNOTATION_COLUMNS.values(),
]
#: rejected images, and rejected annotation files (their images are kept, without the annotation)
REJECT_COLUMNS = ["path", "source", "source_label", "reason"]

# ---- run directory
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
PACKED_FILE = "weights.npz"
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
#: the fast runtimes a model can be exported to (``liverscan export --format``, ``train.export_runtime``)
EXPORT_FORMATS = ("tflite", "onnx")
OOD_FILE = "ood_reference.npz"
LESION_FILE = "lesion.keras"  # the lesion localisation head: pixels -> lesion probability map (when trained)
LESION_TFLITE_FILE = "lesion.tflite"
LESION_ONNX_FILE = "lesion.onnx"
LESION_OOF_FILE = "lesion_oof.npz"  # cross-validated runs: out-of-fold lesion maps (paths, maps at stride 4)
CARD_FILE = "model_card.json"
CARD_MD_FILE = "model_card.md"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training-curves.png"
CHECKPOINT_DIR = "checkpoint"
FEDERATION_PROGRESS_FILE = "federation_progress.npz"  # a stopped federated coordinator's progress (resume)
FEATURES_DIR = "features"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"

OOF_FILE = "oof_predictions.csv"  # cross-validated runs: one out-of-fold prediction per image and repeat
#: every file liverscan writes at the top of a run directory (train, cross-validation, export, report); with its
#: working folders and ``eval-*`` folders, what ``train --overwrite`` may replace
RUN_FILES = (
    CONFIG_FILE,
    RUN_FILE,
    MODEL_FILE,
    PACKED_FILE,
    TFLITE_FILE,
    ONNX_FILE,
    OOD_FILE,
    LESION_FILE,
    LESION_TFLITE_FILE,
    LESION_ONNX_FILE,
    LESION_OOF_FILE,
    CARD_FILE,
    CARD_MD_FILE,
    HISTORY_FILE,
    CURVES_FILE,
    REPORT_HTML,
    REPORT_MD,
    OOF_FILE,
    FEDERATION_PROGRESS_FILE,
)


def lesion_export_key(fmt: str) -> str:
    """The model card's ``exports`` key of the lesion head's ``fmt`` export (``lesion_tflite``, ``lesion_onnx``)."""
    return f"lesion_{fmt}"


# ---- evaluation directory
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
#: every file evaluate writes into an evaluation directory (the figures when drawn, the lesion scores when scored)
EVAL_FILES = (
    PREDICTIONS_FILE,
    METRICS_FILE,
    CONFIG_FILE,
    "confusion.png",
    "confusion-tuned.png",
    "roc.png",
    "reliability.png",
    "localisation.csv",
    "localisation.png",
)

HISTORY_COLUMNS = ["epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]

#: Version of the model card layout; cards written before it existed are version 0.
CARD_SCHEMA_VERSION = 1


def eval_dir_name(split: str) -> str:
    return f"eval-{split}"


# ---- what liverscan wrote: only that is ever replaced or removed


def own_name(path: Path, names: Collection[str]) -> bool:
    """A file named as one of ``names``, or left beside one by an interrupted atomic write or export check."""
    if path.is_dir() and not path.is_symlink():
        return False
    name = path.name
    if name in names:
        return True
    if name.startswith(".") and name.endswith((".tmp", ".check", ".tmp.keras")):
        return any(name[1:].startswith(f"{n}.") for n in names)
    return name.endswith(".tmp.keras") and f"{name[: -len('.tmp.keras')]}.keras" in names


#: a file that counts as liverscan's only beside the one written just before it, where a command writes both
#: (evaluate: alone, a ``config.yaml`` is someone's configuration, perhaps the one given to ``--config``)
WRITTEN_AFTER = {CONFIG_FILE: METRICS_FILE}


def foreign_entry(folder: Path, names: Collection[str]) -> Path | None:
    """The first entry of ``folder`` (sorted) that is not a file of ``names`` (:func:`own_name`, and
    :data:`WRITTEN_AFTER`), or None."""
    odd = next((p for p in sorted(folder.iterdir()) if not own_name(p, names)), None)
    for later, before in WRITTEN_AFTER.items():
        if odd is None and later in names and before in names and (folder / later).exists():
            odd = None if (folder / before).is_file() else folder / later
    return odd


def claim_out_dir(folder: Path, names: Collection[str], command: str) -> None:
    """Check, before any work, that ``command`` may write its files ``names`` into the output folder ``folder``:
    a missing or empty folder, or one holding nothing but the command's earlier output (replaced, as ever).
    A folder with a file liverscan did not write there is refused, naming the file (nothing is written)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise RunDirError(f"{folder}: not a folder ({command} writes its files into a folder)")
    odd = foreign_entry(folder, names)
    if odd is not None:
        raise RunDirError(
            f"{odd}: not written by liverscan {command}; it writes only into an empty folder or over its own "
            f"earlier output, so give another --out or move the file out of {folder}"
        )


@dataclass
class ModelCard:
    """What a trained model is, how it was made and how it must be fed (``model_card.json``).

    The fields every command relies on are typed; the free-form records
    (``training``, ``validation``, ``data``, ...) stay mappings. Keys this version
    does not know are kept in ``extra`` and written back unchanged.
    """

    name: str
    classes: list[str]
    image_size: int
    build: dict[str, Any]
    schema_version: int = CARD_SCHEMA_VERSION
    created: str = ""
    intended_use: str = "Research use only - not a medical device. Not for diagnosis or treatment decisions."
    task: str = "liver B-mode ultrasound image classification"
    class_map: dict[str, str] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    backbone_weights: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    operating_point: OperatingPoint | None = None  # the decision rule fitted by evaluate (None: argmax)
    ood: dict[str, Any] | None = None  # the out-of-distribution guard (method, threshold, retention, file)
    # the lesion localisation head (file, design, threshold, min_area, training, out-of-fold figures); None: none
    lesion: dict[str, Any] | None = None
    exports: dict[str, Any] = field(default_factory=dict)
    # what the model files and classes were when training wrote them (see seal); {}: a card from before 0.7
    integrity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def prepared_dir(self) -> str | None:
        return self.data.get("prepared_dir") or None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "model card") -> ModelCard:
        """Read any schema version (0: no version field, size stored in ``input.size`` and ``build``)."""
        try:
            d = dict(raw)
            version = int(d.pop("schema_version", 0))
            if version > CARD_SCHEMA_VERSION:
                raise RunDirError(
                    f"{where}: schema version {version} is newer than this liverscan "
                    f"understands ({CARD_SCHEMA_VERSION}); upgrade liverscan"
                )
            build = dict(d.pop("build"))
            size = int(d["input"]["size"][0])
            build.pop("image_size", None)  # version 0 stored it twice
            known = {f.name for f in fields(cls)} - {"extra", "schema_version", "image_size", "build"}
            kwargs = {k: d.pop(k) for k in list(d) if k in known}
            kwargs.setdefault("exports", {})
            from liverscan.core.operating_point import OperatingPoint

            kwargs["operating_point"] = OperatingPoint.from_card(kwargs.get("operating_point"))
            return cls(image_size=size, build=build, schema_version=CARD_SCHEMA_VERSION, extra=d, **kwargs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RunDirError(f"{where}: malformed model card ({exc.__class__.__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.pop("image_size")  # stored once, as input.size
        d["input"] = {**d["input"], "size": [self.image_size, self.image_size, 3]}
        d["operating_point"] = self.operating_point.to_card() if self.operating_point else None
        order = ["schema_version", "name", "created", "intended_use", "task", "classes", "class_map"]
        out = {k: d.pop(k) for k in order}
        out.update(d)
        out.update(extra)
        return out

    def to_markdown(self) -> str:
        t = self.training
        v = self.validation or {}
        arch = self.architecture
        lines = [
            f"# Model card: {self.name}",
            "",
            f"**{self.intended_use}**",
            "",
            f"- Task: {self.task}",
            f"- Classes: {', '.join(self.classes)}",
            f"- Class map: {', '.join(f'{k} -> {c}' for k, c in self.class_map.items())}",
            f"- Input: {self.image_size}x{self.image_size} RGB; {self.input.get('scaling', '')}",
            f"- Architecture: {arch.get('backbone')}; head {arch.get('head')}"
            + (f"; features {arch['features']}" if arch.get("features") else ""),
        ]
        if arch.get("parameters"):
            p = arch["parameters"]
            lines.append(f"- Parameters: {p['total']:,} total, {p['trainable']:,} trainable")
        if self.backbone_weights:
            bw = self.backbone_weights
            lines.append(f"- Backbone weights: {bw.get('description')} ({bw.get('spec')})")
        if self.data:
            lines.append(
                f"- Data: manifest {str(self.data.get('manifest_hash', ''))[:16]} from "
                f"{', '.join(self.data.get('sources', []))}"
            )
        if t:
            lines.append("- Training: " + ", ".join(_training_parts(t)))
        scores = [f"{k.replace('_', ' ')} {v[k]}" for k in ("accuracy", "balanced_accuracy") if v.get(k) is not None]
        if scores:
            lines.append(
                "- Validation" + (f" (n={v['n']})" if v.get("n") is not None else "") + ": " + ", ".join(scores)
            )
        if self.operating_point:
            lines.append(f"- Operating point: {self.operating_point.description}")
        if self.ood:
            o = self.ood
            lines.append(
                f"- Out-of-distribution guard: {o.get('method')} (k={o.get('k')}) on pooled features + image "
                f"checks; threshold {o.get('threshold')} keeps {o.get('retention')} of {o.get('calibrated_on')}"
            )
        if self.lesion:
            from liverscan.core.lesion import LesionRule

            les, lt = self.lesion, self.lesion.get("training") or {}
            lines.append(
                f"- Lesion localisation: {les.get('design')}; {lt.get('images_with_lesion')} outlined lesion images "
                f"and {lt.get('images_without_lesion')} lesion-free images, {lt.get('epochs')} epochs; a lesion: "
                f"{LesionRule.from_entry(les).describe()}"
            )
            oof = (les.get("out_of_fold") or {}).get("metrics")
            if oof:
                lines.append(f"- Lesion localisation out of fold: {figures_line(oof)}")
        lines.append("")
        return "\n".join(lines)


def _training_parts(t: dict[str, Any]) -> list[str]:
    """The card's training record as phrases, leaving out what does not apply (a linear probe has no optimizer,
    batch or epochs; an mlp head no C)."""
    best = t.get("best") or {}
    parts = [f"{t['mode']} mode" if t.get("mode") else None, f"loss {t['loss']}" if t.get("loss") else None]
    parts += [t.get("optimizer"), f"batch {t['batch_size']}" if t.get("batch_size") else None]
    if t.get("C") is not None:
        folds = f" (inner {t['inner_folds']}-fold group cross-validation)" if t.get("inner_folds") else ""
        parts.append(f"C = {t['C']:.4g}{folds}")
    if t.get("epochs_run"):
        parts.append(f"{t['epochs_run']} epochs" + (f" (limit {t['epoch_limit']})" if t.get("epoch_limit") else ""))
    if best.get("epoch") is not None:
        parts.append(f"best epoch {best['epoch']}" + (f" ({best['stage']})" if best.get("stage") else ""))
    elif best.get("stage"):
        parts.append(str(best["stage"]))
    if t.get("seed") is not None:
        parts.append(f"seed {t['seed']}")
    if t.get("seconds") is not None:
        where = " ".join(x for x in (t.get("device"), f"({t['backend']})" if t.get("backend") else None) if x)
        parts.append(f"{t['seconds']} s" + (f" on {where}" if where else ""))
    return [p for p in parts if p]


def figures_line(figures: dict[str, Any]) -> str:
    """``{"pointing": {"value": 0.7, "ci95": [0.6, 0.8]}, "n_outlined": 507, ...}`` as one readable line."""
    parts = []
    for key, v in figures.items():
        name = key.replace("_", " ")
        if isinstance(v, dict) and v.get("value") is not None:
            ci = v.get("ci95")
            parts.append(f"{name} {v['value']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{name} {v}")
    return ", ".join(parts)


def read_card(run_dir: str | Path) -> ModelCard:
    """The model card of a run directory (any schema version)."""
    path = Path(run_dir) / CARD_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CARD_FILE} (is this a finished training run?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{path}: not a model card (expected a JSON object)")
    return ModelCard.from_dict(raw, str(path))


def write_card(run_dir: str | Path, card: ModelCard) -> None:
    """Write ``model_card.json`` and its Markdown rendering (both atomically); a sealed card (see :func:`seal`)
    has its decision rules sealed anew, as liverscan writes them."""
    if card.integrity:
        card.integrity["rules"] = rules_digest(card)
    run = Path(run_dir)
    write_json_atomic(run / CARD_FILE, card.to_dict())
    write_text_atomic(run / CARD_MD_FILE, card.to_markdown())


@dataclass
class LoadedRun:
    """A trained model with its card: a run directory, a shipped model folder or a model file."""

    model_path: Path
    run_dir: Path | None
    card: ModelCard

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def source(self) -> Path:
        return self.run_dir or self.model_path

    def save_card(self) -> None:
        if self.run_dir is None:
            raise RunDirError(f"{self.model_path}: the model card lives in a run directory; pass the directory")
        write_card(self.run_dir, self.card)


def load_run(path: str | Path) -> LoadedRun:
    """Resolve a run directory or model file; a model file next to a card uses that card.

    The run is checked against its card's ``integrity`` record (:func:`check_integrity`): classes edited in
    the card, or a model file that is not the one training wrote, is an error here, before anything runs."""
    p = Path(path)
    if p.is_dir():
        model_path = p / MODEL_FILE
        if not model_path.is_file() and (p / PACKED_FILE).is_file():
            model_path = p / PACKED_FILE
        if not model_path.is_file():
            raise RunDirError(f"{p}: no {MODEL_FILE} (is this a finished training run?)")
        run = LoadedRun(model_path, p, read_card(p))
    elif p.is_file():
        if not (p.parent / CARD_FILE).is_file():
            raise RunDirError(f"{p}: no {CARD_FILE} beside the model file; pass the run directory")
        run = LoadedRun(p, p.parent, read_card(p.parent))
    else:
        raise RunDirError(f"{p}: no such run directory or model file")
    check_integrity(run.card, run.model_path.parent)
    return run


# ---- integrity: the card vouches for its model files and classes


def classes_digest(classes: list[str]) -> str:
    """sha256 of the class list, in order (a swapped or renamed class changes it)."""
    return sha256_bytes(json.dumps(list(classes)).encode("utf-8"))


def seal(card: ModelCard, folder: str | Path) -> None:
    """Record in ``card.integrity`` the sha256 of the model files in ``folder`` that the card describes (the
    model, its out-of-distribution reference, its lesion head) and a digest of its classes; called where those
    files are written.  Exported runtimes carry their own sha256 in ``card.exports``."""
    folder = Path(folder)
    model = MODEL_FILE if (folder / MODEL_FILE).is_file() else PACKED_FILE
    names = [model, OOD_FILE, str((card.lesion or {}).get("file") or "")]
    card.integrity = {
        "classes": classes_digest(card.classes),
        "files": {n: sha256_file(folder / n) for n in names if n and (folder / n).is_file()},
    }


def recorded_sha256(card: ModelCard, name: str) -> str | None:
    """The sha256 the card records for the model file ``name`` (integrity or exports); None: none recorded."""
    files = card.integrity.get("files") or {}
    if name in files:
        return str(files[name])
    for entry in card.exports.values():
        if isinstance(entry, dict) and entry.get("file") == name and entry.get("sha256"):
            return str(entry["sha256"])
    return None


def check_file(card: ModelCard, path: str | Path, remedy: str) -> Path:
    """``path`` when it is the file its card records (or the card records none); else a one-line
    :class:`ModelError` naming it, ending with ``remedy``.  A missing file is left to the caller."""
    path = Path(path)
    expected = recorded_sha256(card, path.name)
    if expected and path.is_file():
        got = sha256_file(path)
        if got != expected:
            raise ModelError(
                f"{path}: not the file its model card records (sha256 {got[:12]}, the card says {expected[:12]}): "
                f"copied from another run or changed after training; {remedy}"
            )
    return path


#: the model card's entries that decide an answer, by part, as :func:`rules_digest` seals them (descriptive keys -
#: training records, figures - are left out: evaluate and export add to those)
RULE_KEYS: dict[str, tuple[str, ...]] = {
    "ood": ("method", "k", "l2_normalised", "threshold", "retention", "file"),
    "lesion": (
        "file",
        "zoom",
        "flip",
        "layers",
        "width",
        "threshold",
        "min_area",
        "extent",
        "floor",
        "gate",
        "gate_classes",
    ),  # fmt: skip
}
#: how an error names each sealed part
RULE_PARTS = {
    "input": "input (image size, decoding rules)",
    "operating_point": "operating point (the decision rule)",
    "ood": "out-of-distribution guard (method, k, threshold)",
    "lesion": "lesion rule (threshold, gate, outline, passes)",
}


def decision_rules(card: ModelCard) -> dict[str, Any]:
    """What in the card decides an answer, by part (see :data:`RULE_PARTS`); the classes are sealed on their own."""
    return {
        "input": {"size": card.image_size, "decoder": card.input.get("decoder")},
        "operating_point": card.operating_point.to_card() if card.operating_point else None,
        "ood": {k: card.ood.get(k) for k in RULE_KEYS["ood"]} if card.ood else None,
        "lesion": {k: card.lesion.get(k) for k in RULE_KEYS["lesion"]} if card.lesion else None,
    }


def rules_digest(card: ModelCard) -> dict[str, str]:
    """sha256 of each part of the card's decision rules (:func:`decision_rules`)."""
    return {
        part: sha256_bytes(json.dumps(value, sort_keys=True, default=str).encode("utf-8"))
        for part, value in decision_rules(card).items()
    }


def seal_notices(card: ModelCard) -> list[str]:
    """What to tell a user about a card whose decision rules no seal vouches for (empty when sealed)."""
    if not card.integrity:
        return [
            "the model card carries no integrity seal (written by an older liverscan, or by hand): its classes, "
            "model files and decision rules cannot be checked against what training wrote; retrain to seal them"
        ]
    if "rules" not in card.integrity:
        return [
            "the model card's decision rules (thresholds, operating point, lesion rule) are not sealed (written by "
            "an older liverscan): an edit to them cannot be detected; retrain, or evaluate the run again, to seal them"
        ]
    return []


def check_integrity(card: ModelCard, folder: str | Path) -> None:
    """The card's classes, decision rules and every model file it vouches for, as liverscan wrote them (cards
    without an ``integrity`` record, written before it existed, are taken as they are: see :func:`seal_notices`)."""
    if not card.integrity:
        return
    folder = Path(folder)
    digest = card.integrity.get("classes")
    if digest and digest != classes_digest(card.classes):
        raise RunDirError(
            f"{folder / CARD_FILE}: classes {', '.join(card.classes)} are not the ones the model was trained "
            "with (edited, reordered or renamed in the card?); restore the model card"
        )
    sealed = card.integrity.get("rules") or {}
    for part, value in rules_digest(card).items():
        if part in sealed and sealed[part] != value:
            raise RunDirError(
                f"{folder / CARD_FILE}: its {RULE_PARTS[part]} is not what liverscan wrote (edited in the card?); "
                "restore the model card, or train (or evaluate) again to set it"
            )
    for name in card.integrity.get("files") or {}:
        check_file(card, folder / name, "restore it from the run it belongs to, or train again")


def write_history(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    write_csv_atomic(Path(run_dir) / HISTORY_FILE, HISTORY_COLUMNS, [[r[c] for c in HISTORY_COLUMNS] for r in history])


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """``history.csv`` as rows of floats (``stage`` stays text)."""
    rows = read_csv(Path(run_dir) / HISTORY_FILE)
    return [{k: (v if k == "stage" else float(v)) for k, v in r.items()} for r in rows]


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: nothing to resume (no {RUN_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_info(run_dir: str | Path, info: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / RUN_FILE, info)


#: the phases of a run (``run.json`` ``phases``): training, then those ``liverscan train`` adds - the out-of-fold
#: evaluation into ``eval-cv/`` (cross-validated runs) and the fast runtime's export (``train.export_runtime``)
TRAIN_PHASE = "train"
EVALUATE_PHASE = "evaluate"
EXPORT_PHASE = "export"


def pending_phases(info: dict[str, Any]) -> list[str]:
    """The phases of a run's ``run.json`` not done yet, in order (a ``run.json`` from before phases were
    recorded: none once it is complete, else training)."""
    phases = info.get("phases") or [TRAIN_PHASE]
    done = set(info.get("done") or ([TRAIN_PHASE] if info.get("status") == "complete" else []))
    return [p for p in phases if p not in done]
