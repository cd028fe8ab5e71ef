"""Pack a trained run as the default model shipped inside the package.

Writes ``src/liverscan/models/default/``: ``weights.npz`` (float16 weights, rebuilt
into the architecture on load), ``model.tflite`` (the same weights for the LiteRT
runtime, stored as float32 so both runtimes give the same probabilities), ``model_card.json`` (with the packed model's own test metrics) and
``README.md`` (classes, data, licence and attribution, intended use).

    python examples/reproduce.py --only xu-tumor-vs-normal
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

ATTRIBUTION = """Trained on the xu-liver development subset of: Xu Y. et al., "Annotated ultrasound liver images",
Zenodo, doi:10.5281/zenodo.7272660 (study: Briefings in Bioinformatics 24(1) bbac569, 2023), licensed
CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). Backbone: MobileNetV2 ImageNet-pretrained
weights (offline copy whose top blocks were lightly fine-tuned on dog photos; see the model card)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--target", type=Path, default=TARGET)
    args = ap.parse_args()

    from liverscan.core.artifacts import read_card
    from liverscan.core.model import load_model
    from liverscan.evaluation.evaluate import evaluate

    card = read_card(args.run).to_dict()
    model = load_model(args.run / "model.keras")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "default"
        staged.mkdir()
        np.savez_compressed(staged / "weights.npz", *[w.astype(np.float16) for w in model.get_weights()])
        card = dict(card)
        card["name"] = "liverscan default model (xu-liver, tumor vs normal)"
        card["packed"] = {"weights": "float16 (weights.npz), cast to float32 on load"}
        card["training_data_licence"] = ATTRIBUTION
        card.pop("operating_point", None)
        (staged / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        # float32 TFLite twin of the float16-rounded weights (an fp16 TFLite file may run in fp16
        # arithmetic on some CPUs and then differs by ~1e-2), checked on real images
        import tensorflow as tf

        from liverscan.core.dataset import PreparedData

        packed = load_model(staged / "weights.npz")
        (staged / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(packed).convert())
        from liverscan.serving.runtime import TFLiteRunner

        x = PreparedData(card["data"]["prepared_dir"]).split("test", 160).x[:64].astype(np.float32)
        ref = np.asarray(packed.predict(x, verbose=0), dtype=np.float64)
        diff = float(np.abs(TFLiteRunner(staged / "model.tflite", 32)(x) - ref / ref.sum(1, keepdims=True)).max())
        if diff > 1e-4:
            print(f"TFLite twin disagrees: {diff:.2e}", file=sys.stderr)
            return 1
        # the packed model's own metrics on the run's test split
        ev = evaluate(staged, data=card["data"]["prepared_dir"], out=Path(tmp) / "eval", bootstrap=1000, figures=False)
        m = ev.metrics["argmax"]
        iv = m["bootstrap"]["intervals"]
        card["test"] = {
            "data": ev.metrics["data"],
            "n": ev.metrics["n"],
            "accuracy": round(m["accuracy"], 4),
            "accuracy_ci": [round(v, 4) for v in iv["accuracy"]],
            "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "balanced_accuracy_ci": [round(v, 4) for v in iv["balanced_accuracy"]],
            "macro_roc_auc": round(m["macro"]["roc_auc"], 4),
            "recall": {c: round(v["recall"], 4) for c, v in m["per_class"].items()},
            "precision": {c: round(v["precision"], 4) for c, v in m["per_class"].items()},
            "ece": round(m["calibration"]["ece"], 4),
        }
        # nothing machine-specific ships: replace local paths with descriptions
        card["data"]["prepared_dir"] = "xu-liver development subset, prepared by examples/reproduce.py (seed 42)"
        card["backbone_weights"]["spec"] = Path(card["backbone_weights"]["spec"]).name
        card["test"]["data"] = "test split of that prepared dataset"
        card["packed"]["bytes"] = {f.name: f.stat().st_size for f in sorted(staged.iterdir())}
        card["exports"] = {
            "tflite": {
                "file": "model.tflite",
                "max_abs_difference_vs_keras": diff,
                "checked_images": int(len(x)),
                "weights": "float32 copy of the float16 weights",
            }
        }
        (staged / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        t = card["test"]
        (staged / "README.md").write_text(f"""# liverscan default model

**Research use only — not a medical device.** Not for diagnosis or treatment decisions.

- Predicts exactly two classes: **{" and ".join(card["classes"])}**. It cannot recognise fatty liver:
  no openly licensed whole-frame fatty-liver data was available to train it. To get a three-class
  model (normal / fatty / tumor), prepare and train on your own data (see the project README).
- Architecture: MobileNetV2 (frozen) + Dropout 0.5 + Dense 128 + Dense softmax, 160x160 input; weights
  stored as float16 (`weights.npz`), plus a TensorFlow Lite twin `model.tflite` (float32 storage of the
  same values) for fast CPU prediction.
- Test split of its own data (n={t["n"]}): accuracy {t["accuracy"]:.3f} (95% CI {t["accuracy_ci"][0]:.3f}–{t["accuracy_ci"][1]:.3f}),
  balanced accuracy {t["balanced_accuracy"]:.3f}, macro ROC-AUC {t["macro_roc_auc"]:.3f}. These images come from one
  public collection; expect lower accuracy on other scanners and sites.
- Data and licence: {ATTRIBUTION}
""")
        if args.target.exists():
            shutil.rmtree(args.target)
        shutil.copytree(staged, args.target)
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in card["packed"]["bytes"].items())
    print(f"wrote {args.target}: {sizes}; test accuracy {card['test']['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
