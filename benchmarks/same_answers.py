"""Same answers before and after a change: records, CSV columns and metrics of two versions compared.

Runs one fixed script of commands — predict (CSV, JSON Lines, studies) with the shipped model on the
xu-liver images, evaluate of the shipped model on them, and on the Byra patches a cross-validated
training run, a patient-level operating point and a grouped predict that applies it — once with the
liverscan of a git revision (checked out into a temporary worktree) and once with this checkout, then
compares every output file: CSV cells and JSON values (floats to 1e-9), ignoring only time stamps,
versions and the folders the runs lived in.

    python benchmarks/same_answers.py --before HEAD~1            # both versions, then compare
    python benchmarks/same_answers.py --before v0.4 --quick      # predict and evaluate only
    python benchmarks/same_answers.py --smoke                    # 12 images, this checkout against HEAD

Exit 0 when every output matches, 1 with the differences listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IGNORED_KEYS = {"created", "versions", "model", "data", "fitted_on", "seconds", "python", "prepared_dir", "source"}


def _run(src: Path, args: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-c", "from liverscan.faces.cli import main; main()", *args]
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    # "some files failed" is exit code 4 (2 before liverscan 0.7, where 2 is now a usage error): the records of
    # a partial failure are compared like any others; a usage error leaves no outputs, which the comparison reports
    if proc.returncode not in (0, 2, 4):
        raise SystemExit(f"failed ({proc.returncode}): liverscan {' '.join(args)}\n{proc.stderr[-2000:]}")


def produce(src: Path, out: Path, images: list[str], byra: Path | None, env: dict[str, str]) -> None:
    """The fixed script of commands, outputs under ``out``."""
    out.mkdir(parents=True)
    listing = out / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    q = ["--quiet"]
    _run(src, ["predict", *images, "--output", str(out / "predict.csv"), *q], env)
    _run(src, ["predict", *images, "--output", str(out / "predict.jsonl"), *q], env)
    _run(src, ["predict", *images, "--group-by", "folder", "--study-output", str(out / "studies.csv"), *q], env)
    data = Path(images[0]).parents[2]
    _run(src, ["evaluate", str(REPO / "src/liverscan/models/default"), "--data", str(data)]
         + ["--out", str(out / "eval-xu"), "--set", "eval.bootstrap=200"], env)  # fmt: skip
    if byra is None:
        return
    prep, run = out / "byra-prep", out / "byra-run"
    # the old option spellings: both versions understand them
    _run(src, ["prepare", str(byra / "labels.csv"), "--out", str(prep), "--split", "100/0/0"], env)
    _run(src, ["train", "--data", str(prep), "--out", str(run), "--folds", "3"], env)
    _run(src, ["evaluate", str(run), "--operating-point", "fatty>=0.9", "--out", str(out / "eval-byra")]
         + ["--set", "eval.operating_point_level=group", "--set", "eval.bootstrap=200"], env)  # fmt: skip
    rois = sorted(str(p) for p in (byra / "rois").glob("*.png"))[:120]
    _run(src, ["predict", *rois, "--model", str(run), "--operating-point", "--group-by", r"regex:ROI_(\d+)_"]
         + ["--output", str(out / "byra-predict.csv"), "--study-output", str(out / "byra-studies.jsonl"), *q], env)  # fmt: skip
    shutil.copy(run / "model_card.json", out / "byra-card.json")
    for tree in (prep, run):
        shutil.rmtree(tree)


def _close(a, b) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def _json_diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED_KEYS:
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _json_diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _json_diff(x, y, f"{where}[{i}]", out)
    elif not _close(a, b):
        out.append(f"{where}: {str(a)[:80]} != {str(b)[:80]}")


def _strip(text: str, roots: list[Path]) -> str:
    for r in roots:
        text = text.replace(str(r), "<out>")
    return text


def compare(before: Path, after: Path) -> list[str]:
    problems: list[str] = []
    names = sorted({p.relative_to(before) for p in before.rglob("*") if p.is_file()})
    names_after = sorted({p.relative_to(after) for p in after.rglob("*") if p.is_file()})
    for n in sorted(set(names) ^ set(names_after)):
        problems.append(f"{n}: only in {'before' if n in names else 'after'}")
    for n in sorted(set(names) & set(names_after)):
        a, b = (_strip((root / n).read_text(errors="replace"), [before, after]) for root in (before, after))
        if n.suffix == ".csv":
            ra, rb = list(csv.reader(a.splitlines())), list(csv.reader(b.splitlines()))
            if not ra or not rb or ra[0] != rb[0]:
                problems.append(f"{n}: columns differ: {ra[:1]} vs {rb[:1]}")
            elif len(ra) != len(rb):
                problems.append(f"{n}: {len(ra)} vs {len(rb)} rows")
            else:
                bad = [(i, j) for i, (x, y) in enumerate(zip(ra, rb)) for j, (u, v) in enumerate(zip(x, y))]
                bad = [(i, j) for i, j in bad if not _close(ra[i][j], rb[i][j])]
                problems += [f"{n}: row {i} {ra[0][j]}: {ra[i][j]} != {rb[i][j]}" for i, j in bad[:5]]
        elif n.suffix in (".json", ".jsonl"):
            da = [json.loads(x) for x in a.splitlines() if x.strip()] if n.suffix == ".jsonl" else json.loads(a)
            db = [json.loads(x) for x in b.splitlines() if x.strip()] if n.suffix == ".jsonl" else json.loads(b)
            _json_diff(da, db, str(n), problems)
        elif n.suffix in (".txt", ".yaml", ".md") and a != b and n.name != "config.yaml":
            problems.append(f"{n}: text differs")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD", help="git revision to compare against (default HEAD)")
    ap.add_argument("--images", type=int, default=600, help="xu-liver images to predict (default: all)")
    ap.add_argument("--quick", action="store_true", help="predict and evaluate only (no training)")
    ap.add_argument(
        "--smoke", action="store_true", help="12 images (evaluate on them alone), no training: checks the script runs"
    )
    ap.add_argument("--keep", type=Path, help="keep both output folders here (an existing one is reused)")
    args = ap.parse_args()
    xu = SHARED / "data" / "xu-liver"
    if not xu.is_dir():
        print(f"no data: {xu} is missing", file=sys.stderr)
        return 3
    n = 12 if args.smoke else args.images
    files = sorted(xu.glob("*/image/*.jpg"), key=lambda p: (p.parts[-3], int(p.stem) if p.stem.isdigit() else 0))
    step = max(1, len(files) // n)
    images = [str(p) for p in files[::step][:n]]
    byra = None if (args.quick or args.smoke) else SHARED / "data" / "byra-rois"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = Path(args.keep or tempfile.mkdtemp(prefix="same-answers-"))
    if args.smoke:  # evaluate reads a folder: one holding only these images (links, in the xu layout)
        links = [work / "data" / Path(p).relative_to(xu) for p in images]
        for link, p in zip(links, images):
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(p)
        images = [str(p) for p in links]
    tree = Path(tempfile.mkdtemp(prefix="before-tree-"))
    try:
        git = ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before]
        proc = subprocess.run(git, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(git)}\n{proc.stderr[-2000:]}")
        for name, src in (("before", tree / "src"), ("after", REPO / "src")):
            if (work / name).is_dir():  # kept from an earlier run with --keep: reused
                print(f"reusing {work / name}", flush=True)
                continue
            print(f"running {name} ({src.parent})", flush=True)
            produce(src, work / name, images, byra, env)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    problems = compare(work / "before", work / "after")
    files_compared = sum(1 for p in (work / "before").rglob("*") if p.is_file())
    print(f"{files_compared} output files compared ({len(images)} images{'' if byra is None else ', Byra CV run'})")
    for p in problems:
        print("  differs:", p)
    print("same answers" if not problems else f"{len(problems)} differences")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
