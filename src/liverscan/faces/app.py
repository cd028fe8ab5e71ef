"""The liverscan Streamlit app (``liverscan app``; optional extra ``liverscan[app]``).

Upload one or many ultrasound images (and DICOM files when ``liverscan[dicom]``
is installed, videos when ``liverscan[video]`` is): each image gets its image, predicted class, probability bars, the
needs-review flag, the predicted lesion outline (when the model has a lesion
head) and a Grad-CAM overlay that can be toggled; several give a
results table and a CSV download identical in content to
``liverscan predict --output x.csv``.  A video (a loop) is one study: its answer, the most suspicious
sampled frame with its lesion outline, and a strip of the sampled frames' probabilities over time.  The side panel shows the model card.

Run with ``liverscan app [--model RUN] [--use-operating-point] [--port N]``; the model is chosen by the
``LIVERSCAN_APP_MODEL`` environment variable (empty: the shipped default model), and
``LIVERSCAN_APP_OPERATING_POINT=1`` decides by the operating point stored in its card, as
``liverscan predict --use-operating-point`` does (a patient-level point with its aggregation rule).
"""

from __future__ import annotations

import io
import os

import streamlit as st

from liverscan.core.errors import LiverscanError
from liverscan.faces import APP_MAX_UPLOAD_MB

NOTICE = "Research use only — not a medical device. Not for diagnosis or treatment decisions."
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom", "mp4", "avi", "mov", "mkv", "m4v", "webm"]
MAX_UPLOAD_MB = APP_MAX_UPLOAD_MB


@st.cache_resource(show_spinner="Loading model…")
def load_classifier(model: str, use_operating_point: bool = False):
    """Loaded once per process and shared by every session."""
    from liverscan.serving import Classifier, PredictOptions

    return Classifier.load(model or None, PredictOptions(use_operating_point=use_operating_point))


def model_card_panel(clf) -> None:
    card = clf.card
    st.sidebar.header("Model card")
    st.sidebar.warning(NOTICE)
    st.sidebar.markdown(f"**Predicts:** {', '.join(clf.classes)}")
    if "fatty" not in clf.classes:
        st.sidebar.caption("This model cannot recognise fatty liver: train a three-class model on your own data.")
    st.sidebar.markdown(f"**Source:** `{clf.source.name}` · runtime {clf.runtime}")
    data = card.data
    st.sidebar.markdown(
        f"**Trained on:** {', '.join(data.get('sources', [])) or 'unknown'} ({data.get('prepared_dir', '')})"
    )
    if card.extra.get("training_data_licence"):
        st.sidebar.caption(card.extra["training_data_licence"])
    cv = (card.extra.get("cross_validation") or {}).get("metrics")
    if cv:
        m = cv["model"]
        st.sidebar.markdown(
            "**Cross-validated (out of fold, 95% CI over groups):** "
            + ", ".join(
                f"{k.replace('_', ' ')} {m[k]['value']:.3f} ({m[k]['ci95'][0]:.3f}–{m[k]['ci95'][1]:.3f})"
                for k in ("accuracy", "balanced_accuracy", "macro_roc_auc")
                if m[k]["ci95"]
            )
        )
    if card.ood:
        st.sidebar.markdown(
            f"**Out-of-distribution guard:** {card.ood['method']} on backbone features + image checks; "
            f"flags images unlike the training data (keeps {card.ood['retention']:.0%} of them)"
        )
    metrics = card.extra.get("test") or card.validation or {}
    if metrics and not cv:
        which = "Test" if card.extra.get("test") else "Validation"
        st.sidebar.markdown(
            f"**{which} metrics** (n={metrics.get('n')}): accuracy {metrics.get('accuracy'):.3f}"
            + (
                f", balanced accuracy {metrics['balanced_accuracy']:.3f}"
                if metrics.get("balanced_accuracy") is not None
                else ""
            )
            + (f", macro ROC-AUC {metrics['macro_roc_auc']:.3f}" if metrics.get("macro_roc_auc") else "")
        )
    op = card.operating_point
    st.sidebar.markdown(f"**Operating point:** {op.description if op else 'none (argmax)'}")
    st.sidebar.markdown(f"**Decision rule in use:** {clf.decision_rule}")


def predict_upload(clf, name: str, data: bytes):
    """[(Prediction, model-input array or None)] for one uploaded file."""
    from liverscan.serving import Prediction

    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        return [(Prediction(name, error=f"file too large ({len(data) / 1e6:.0f} MB > {MAX_UPLOAD_MB} MB)"), None)]
    return clf.predict_bytes(name, data)


def results_csv(clf, records) -> str:
    from liverscan.serving import records_csv

    return records_csv(records, clf.classes, lesion=clf.has_lesion)


def lesion_text(finding) -> str:
    """One line on where the lesion head points (coordinates in pixels of the uploaded image)."""
    if finding.withheld is not None:
        return f"Lesion map not a finding ({finding.withheld}): no outline drawn"
    if not finding.found:
        return f"No lesion found (max probability {finding.probability:.2f})"
    x, y = finding.peak
    regions = f", {finding.count} regions" if finding.count > 1 else ""
    faint = " (a faint map, outlined because of the classifier's lesion probability)" if finding.gated else ""
    return (
        f"Lesion: probability {finding.probability:.2f}{faint} at ({x:.0f}, {y:.0f}), "
        f"{finding.area_fraction:.1%} of the image{regions}"
    )


def with_outline(rec, image):
    """``image`` (the upload or the model input, PIL or array, any size) with the record's lesion outline drawn on
    it; the image unchanged when the record has no finding."""
    if rec.lesion is None:
        return image
    import numpy as np
    from PIL import Image

    from liverscan.serving import draw_finding

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return draw_finding(img, rec.lesion, rec.source_size or img.size)


def show_record(clf, rec, arr, show_cam: bool, data: bytes) -> None:
    title = rec.path + (f" — frame {rec.frame}" if rec.frame else "")
    st.subheader(title)
    if rec.error:
        st.error(f"{rec.path}: {rec.error}")
        return
    left, right = st.columns(2)
    with left:
        image = arr
        if rec.frame is None:
            try:
                from PIL import Image, ImageOps

                image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            except Exception:  # noqa: BLE001 - fall back to the model input
                image = arr
        caption = lesion_text(rec.lesion) if rec.lesion is not None else None
        if show_cam:
            from liverscan.serving import gradcam_caption, headline, overlay

            heat = clf.heatmaps(arr[None], [clf.classes.index(rec.predicted_class)])[0]
            import numpy as np

            picture = with_outline(rec, overlay(np.asarray(image), heat))
            cam = gradcam_caption(headline(rec), rec.predicted_class, heat)
            st.image(picture, caption=cam + (f" · {caption}" if caption else ""), width="stretch")
        else:
            st.image(with_outline(rec, image), caption=caption, width="stretch")
    with right:
        if rec.in_distribution is False:
            st.markdown("### Prediction: **none — out of distribution**")
            st.markdown(f"model output (not an answer): {rec.predicted_class}, {rec.confidence:.3f}")
        else:
            st.markdown(f"### Prediction: **{rec.predicted_class}**")
            st.markdown(f"confidence {rec.confidence:.3f} · {rec.decision_rule}")
        if rec.in_distribution is False:
            st.error(
                "Out of distribution: this image looks unlike the images the model was trained on "
                f"({rec.ood_reason}). The class below is not a reliable answer — another scanner, a screenshot "
                "or not a liver ultrasound? Train on your own images for your scanners."
            )
        elif rec.needs_review:
            st.warning(f"Needs review: confidence below {clf.review_confidence:.2f}")
        for c in clf.classes:
            p = rec.probabilities[c]
            st.progress(min(max(p, 0.0), 1.0), text=f"{c}: {p:.3f}")


def study_of(clf, records):
    """The uploads as one study: the same aggregation as ``liverscan predict --group-by``."""
    agg = clf.study_aggregator(lambda rec: "uploaded study")
    for rec in records:
        agg.add(rec)
    return agg.studies()[0]


def show_study(clf, study, title: str = "Study (all uploads together)") -> None:
    st.header(title)
    frames = f"{study.n_used} of {study.n_frames} images used ({study.n_out_of_distribution} out of distribution)"
    if study.error:
        st.error(study.error)
        return
    if study.decision == "out_of_distribution":
        st.error(f"Study answer: none — most images are out of distribution. {frames}.")
    else:
        st.markdown(f"### Study answer: **{study.predicted_class}** (confidence {study.confidence:.3f})")
    st.markdown(f"{frames}; rule: {study.rule} of the images' probabilities.")
    st.text(  # an uploaded file name is shown as plain text, never as Markdown
        "most suspicious image: "
        + str(study.most_suspicious_path)
        + (f", frame {study.most_suspicious_frame}" if study.most_suspicious_frame else "")
    )
    if study.needs_review and study.decision != "out_of_distribution":
        st.warning("Study needs review (low confidence, a failed image, or out-of-distribution images).")
    for c in clf.classes:
        p = study.probabilities[c]
        st.progress(min(max(p, 0.0), 1.0), text=f"{c}: {p:.3f}")


def probability_strip(classes, records) -> dict[str, list]:
    """The sampled frames' probabilities over time (seconds), one column per class (frames that failed left out)."""
    ok = [r for r in records if r.ok and r.time_s is not None]
    return {"time (s)": [r.time_s for r in ok], **{c: [r.probabilities[c] for r in ok] for c in classes}}


def show_video(clf, name: str, items) -> None:
    """A loop as one study: its answer, the most suspicious sampled frame with its outline, the probability strip."""
    records = [rec for rec, _ in items]
    study = study_of(clf, records)
    show_study(clf, study, f"Video: {name}")
    st.text(
        f"{len(records)} sampled frames; {study.n_voting} voted (frames out of distribution and frozen repeats do not)"
    )
    chosen = next(((r, a) for r, a in items if r.ok and r.frame == study.most_suspicious_frame), None)
    if chosen is not None:
        rec, arr = chosen
        caption = f"frame {rec.frame} at {rec.time_s:.2f} s" if rec.time_s is not None else f"frame {rec.frame}"
        if rec.lesion is not None:
            caption += f" · {lesion_text(rec.lesion)}"
        st.image(with_outline(rec, arr), caption=caption, width=480)
    strip = probability_strip(clf.classes, records)
    if strip["time (s)"]:
        st.line_chart(strip, x="time (s)", y=list(clf.classes))
    for rec in records:
        if rec.error:
            st.error(f"{rec.path}: {rec.error}")


def main() -> None:
    st.set_page_config(page_title="liverscan", layout="wide")
    st.title("liverscan — liver ultrasound classification")
    st.caption(NOTICE)
    try:
        use_point = os.environ.get("LIVERSCAN_APP_OPERATING_POINT", "") not in ("", "0")
        clf = load_classifier(os.environ.get("LIVERSCAN_APP_MODEL", ""), use_point)
    except LiverscanError as exc:
        st.error(f"Cannot load the model: {exc}")
        st.stop()
    model_card_panel(clf)
    files = st.file_uploader(
        "Upload ultrasound images (PNG, JPEG, BMP, TIFF" + (", DICOM" if _has_pydicom() else "") + ") or videos",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
    )
    show_cam = st.toggle("Show Grad-CAM overlay", value=False)
    one_study = st.toggle(
        "These images are one study (one patient)",
        value=False,
        help="Adds one aggregated answer for all uploads (as predict --group-by: mean of the frames' probabilities, "
        "or the rule a patient-level operating point was fitted with), beside each image's.",
    )
    if not files:
        st.info("Upload one or more images to classify them.")
        return
    from liverscan.core.video import is_video_path

    records: list = []
    for f in files:
        data = f.getvalue()
        try:
            items = predict_upload(clf, f.name, data)
        except Exception as exc:  # noqa: BLE001 - the app must keep working
            from liverscan.serving import Prediction

            items = [(Prediction(f.name, error=f"unexpected error: {exc.__class__.__name__}"), None)]
        if is_video_path(f.name):
            show_video(clf, f.name, items)
            records.extend(rec for rec, _ in items)
            continue
        for rec, arr in items:
            show_record(clf, rec, arr, show_cam, data)
            records.append(rec)
    if len(records) > 1:
        st.header("Results")
        rows = [
            {
                "file": r.path,
                "frame": r.frame or "",
                "class": r.predicted_class or "error",
                "confidence": None if r.confidence is None else round(r.confidence, 4),
                **{f"p({c})": round(r.probabilities[c], 4) if r.probabilities else None for c in clf.classes},
                "decision": r.decision or "error",
                "in distribution": r.in_distribution,
                "needs review": r.needs_review,
                **({"lesion": lesion_text(r.lesion) if r.lesion else ""} if clf.has_lesion else {}),
                "error": r.error or "",
            }
            for r in records
        ]
        st.dataframe(rows, width="stretch")
    if one_study and records:
        show_study(clf, study_of(clf, records))
    text = results_csv(clf, records)
    st.session_state["results_csv"] = text
    st.download_button("Download results (CSV)", text, file_name="liverscan-results.csv", mime="text/csv")


def _has_pydicom() -> bool:
    try:
        import pydicom  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":  # Streamlit runs this file as __main__; importing it does nothing
    main()
