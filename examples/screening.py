"""Batch screening with the liverscan Python API.

Classifies every image under a folder with the same loop as ``liverscan predict`` (``predict_files``),
writes every record to a CSV, a second CSV of the cases that need a radiologist's review (a tumour
decision, out of distribution, low confidence or unreadable) and prints a summary.

    python examples/screening.py examples/images --model runs/xu --out review.csv
    python examples/screening.py examples/images            # the shipped default model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from liverscan.serving import Prediction, PredictOptions, predict_files, records_csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="folder of ultrasound images (searched recursively)")
    ap.add_argument("--model", default=None, help="run directory or model file (default: shipped model)")
    ap.add_argument("--out", type=Path, default=Path("review.csv"))
    ap.add_argument("--all", type=Path, default=None, help="also write every record here (.csv, .json, .jsonl)")
    args = ap.parse_args()

    flagged: list[Prediction] = []

    def keep_for_review(rec: Prediction) -> None:
        if rec.error or rec.needs_review or rec.decision not in (None, "normal"):
            flagged.append(rec)

    summary = predict_files(
        [args.folder], PredictOptions(), model=args.model, output=args.all, on_record=keep_for_review, overwrite=True
    )
    args.out.write_text(records_csv(flagged, summary.classes))
    print(f"{summary.predicted} of {summary.records} images predicted; {summary.failed} unreadable")
    print("decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items())))
    print(f"{len(flagged)} case(s) for review written to {args.out}")


if __name__ == "__main__":
    main()
