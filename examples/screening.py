"""Batch screening with the liverscan Python API.

Classifies every image under a folder, writes a CSV of the cases that need a
radiologist's review (tumor predicted, or low confidence) and prints a summary.

    python examples/screening.py examples/images --model runs/xu --out review.csv
    python examples/screening.py examples/images            # the shipped default model
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from liverscan import Classifier
from liverscan.serving import expand_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="folder of ultrasound images (searched recursively)")
    ap.add_argument("--model", default=None, help="run directory or model file (default: shipped model)")
    ap.add_argument("--out", type=Path, default=Path("review.csv"))
    args = ap.parse_args()

    clf = Classifier.load(args.model)
    counts: Counter[str] = Counter()
    flagged = []
    for p in clf.iter_predict(expand_inputs([args.folder])):
        if p.error:
            counts["unreadable"] += 1
            flagged.append((p.path, "unreadable", "", p.error))
            continue
        counts[p.predicted_class] += 1
        if p.predicted_class == "tumor" or p.needs_review:
            flagged.append(
                (p.path, p.predicted_class, f"{p.confidence:.3f}", "low confidence" if p.needs_review else "")
            )
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "predicted_class", "confidence", "note"])
        writer.writerows(flagged)
    print(f"model: {clf.source} ({', '.join(clf.classes)})")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"{len(flagged)} case(s) for review written to {args.out}")


if __name__ == "__main__":
    main()
