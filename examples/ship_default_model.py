"""Pack a cross-validated run as the default model shipped inside the package.

Writes ``src/liverscan/models/default/``: ``weights.npz`` (float16 weights, rebuilt
into the architecture on load), ``model.tflite`` (the same weights, float32 storage, giving
probabilities and the pooled features the out-of-distribution guard scores),
``ood_reference.npz`` (the guard), ``model_card.json`` (with the run's cross-validated
out-of-fold metrics) and ``README.md`` (classes, data, licence, intended use); when the run has a lesion
localisation head, also ``lesion.weights.npz`` (its float16 weights) and ``lesion.tflite`` (checked against
them), with the head's out-of-fold localisation figures in the card.

    python examples/reproduce.py --only xu-tumor-vs-normal --lesion
    python examples/ship_default_model.py runs/reproduce/xu-tumor-vs-normal/run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "src" / "liverscan" / "models" / "default"

ATTRIBUTION = """Trained on the xu-liver images of: Xu Y. et al., "Annotated ultrasound liver images",
Zenodo, doi:10.5281/zenodo.7272660 (study: Briefings in Bioinformatics 24(1) bbac569, 2023), licensed
CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). Backbone: MobileNetV2 ImageNet-pretrained
weights (offline copy whose top blocks were lightly fine-tuned on dog photos; see the model card)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--target", type=Path, default=TARGET)
    ap.add_argument(
        "--lesion-from",
        type=Path,
        default=None,
        help="take the lesion head (and its out-of-fold figures) from this other run of the same prepared data "
        "(the head does not depend on the classifier), e.g. a reproduction run with --lesion",
    )
    args = ap.parse_args()

    from liverscan.core import guard
    from liverscan.core.artifacts import OOD_FILE, ModelCard, read_card, seal
    from liverscan.core.dataset import PreparedData
    from liverscan.core.errors import LiverscanError
    from liverscan.core.model import feature_extractor, load_model
    from liverscan.serving.export import write_lesion, write_tflite
    from liverscan.training.features import compute_features

    try:
        card = read_card(args.run)
    except LiverscanError as exc:
        print(
            f"error: {exc} (build the run first: python examples/reproduce.py --only xu-tumor-vs-normal)",
            file=sys.stderr,
        )
        return 1
    cv = card.extra.get("cross_validation") or {}
    if not (cv.get("metrics") and (args.run / OOD_FILE).is_file()):
        print(
            f"{args.run}: needs a cross-validated, evaluated run with an out-of-distribution reference", file=sys.stderr
        )
        return 1
    lesion_run = args.lesion_from or args.run
    if args.lesion_from is not None:
        other = read_card(args.lesion_from)
        if other.data.get("manifest_hash") != card.data.get("manifest_hash") or not other.lesion:
            print(f"{args.lesion_from}: not a run with a lesion head on the same prepared data", file=sys.stderr)
            return 1
        card.lesion = other.lesion
    model = load_model(args.run / "model.keras")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "default"
        staged.mkdir()
        np.savez_compressed(staged / "weights.npz", *[w.astype(np.float16) for w in model.get_weights()])
        shutil.copy(args.run / OOD_FILE, staged / OOD_FILE)
        d = card.to_dict()
        d["name"] = f"liverscan default model (xu-liver, {' vs '.join(reversed(card.classes))})"
        d["packed"] = {"weights": "float16 (weights.npz), cast to float32 on load"}
        d["training_data_licence"] = ATTRIBUTION
        d.pop("operating_point", None)
        (staged / "model_card.json").write_text(json.dumps(d, indent=2) + "\n")
        packed = load_model(staged / "weights.npz")
        # the guard must answer the same for the float16 copy as for the model it was calibrated with
        images = PreparedData(card.prepared_dir).split("all", card.image_size).x
        reference = guard.Reference.load(args.run / OOD_FILE)
        before = guard.scores(reference, compute_features(feature_extractor(model), images))
        after = guard.scores(reference, compute_features(feature_extractor(packed), images))
        flips = int(np.sum((before > reference.threshold) != (after > reference.threshold)))
        packed_head = None
        if card.lesion:
            from liverscan.core import lesion

            lesion.save_packed(load_model(lesion_run / card.lesion["file"]), staged / "lesion.weights.npz")
            packed_head = lesion.load_packed(
                staged / "lesion.weights.npz",
                card.image_size,
                card.lesion["layers"],
                card.lesion["width"],
                zoom=int(card.lesion.get("zoom") or 1),
                flip=bool(card.lesion.get("flip")),
            )
        tflite = write_tflite(packed, staged / "model.tflite", images[:64].astype(np.float32), reference)
        # nothing machine-specific ships: replace local paths with descriptions
        d["data"]["prepared_dir"] = "xu-liver, prepared by examples/reproduce.py (seed 42)"
        d["backbone_weights"]["spec"] = Path(d["backbone_weights"]["spec"]).name
        d["packed"]["guard_flips_vs_float32"] = flips
        d["packed"]["bytes"] = {f.name: f.stat().st_size for f in sorted(staged.iterdir())}
        d["exports"] = {"tflite": {**tflite, "weights": "float32 copy of the float16 weights"}}
        lesion_line = ""
        if packed_head is not None:
            from liverscan.core.artifacts import figures_line

            check = images[np.linspace(0, len(images) - 1, 32).astype(int)].astype(np.float32)
            # the head's untuned backbone layers equal the classifier's: lesion.tflite is both in one graph, those
            # layers run once (predict runs it instead of model.tflite when the lesion head is on)
            lt = write_lesion(
                packed_head, staged / "lesion.tflite", "tflite", check, card.lesion["threshold"], packed, reference
            )
            d["exports"]["lesion_tflite"] = {**lt, "weights": "float32 copy of the float16 weights"}
            d["lesion"] = {**card.lesion, "file": "lesion.weights.npz"}
            d["packed"]["lesion"] = "float16 (lesion.weights.npz), cast to float32 on load"
            d["packed"]["bytes"] = {f.name: f.stat().st_size for f in sorted(staged.iterdir())}
            oof = (card.lesion.get("out_of_fold") or {}).get("metrics") or {}
            if oof:
                lesion_line = (
                    "\n- Where: a lesion localisation head (a decoder on the tuned backbone's multi-scale features) "
                    "gives every prediction a lesion outline, peak and probability map. Out of fold on the outlined "
                    "tumour images: " + figures_line(oof) + " (95% CIs). The classifier's decision does not use it."
                )
        joint_words = ""
        if d["exports"].get("lesion_tflite", {}).get("shared_backbone_with_classifier"):
            below = d["exports"]["lesion_tflite"].get("lesion_head_runs_own_layers_from")
            joint_words = (
                "; `lesion.tflite` gives probabilities, features and the lesion map in one graph, where the "
                + (f"backbone layers below the head's tuned `{below}`" if below else "backbone")
                + " run once for both heads"
            )
        card = ModelCard.from_dict(d)
        seal(card, staged)  # the packed files' sha256 and the classes' digest, checked when the model loads
        (staged / "model_card.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        (staged / "model_card.md").write_text(card.to_markdown())
        m = cv["metrics"]["model"]

        def ci(key: str) -> str:
            v = m[key]
            return f"{v['value']:.3f} (95% CI {v['ci95'][0]:.3f}–{v['ci95'][1]:.3f})"

        (staged / "README.md").write_text(f"""# liverscan default model

**Research use only — not a medical device.** Not for diagnosis or treatment decisions.

- Predicts exactly two classes: **{" and ".join(card.classes)}**. It cannot recognise fatty liver:
  no openly licensed whole-frame fatty-liver data was available to train it. To get a three-class
  model (normal / fatty / tumor), prepare and train on your own data (see the project README).
- Architecture: MobileNetV2 (frozen) + a linear softmax head (the linear probe: L2 logistic regression
  on the standardised pooled features of three stages, C chosen by inner group cross-validation), 160x160 input;
  weights stored as float16 (`weights.npz`), plus a TensorFlow Lite twin `model.tflite` (float32 storage
  of the same values, giving probabilities and features{joint_words}) for fast CPU prediction.
- How good: {cv["folds"]}-fold group-aware cross-validation on {cv["images"]} xu-liver images
  ({cv["groups"]} near-duplicate groups), out of fold: accuracy {ci("accuracy")}, balanced accuracy
  {ci("balanced_accuracy")}, ROC-AUC {ci("macro_roc_auc")} (bootstrap over groups). The shipped weights
  are a refit on all {cv["images"]} images with the cross-validated settings. These images come from one
  public collection; expect lower accuracy on other scanners and sites.
- Out-of-distribution guard (`ood_reference.npz`): images unlike the training images (another scanner,
  screenshots, photos) are flagged `in_distribution: false` with the decision `out_of_distribution`.
- Data and licence: {ATTRIBUTION}{lesion_line}
""")
        if args.target.exists():
            shutil.rmtree(args.target)
        shutil.copytree(staged, args.target)
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in d["packed"]["bytes"].items())
    print(f"wrote {args.target}: {sizes}; guard flips float16 vs float32: {flips} of {len(images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
