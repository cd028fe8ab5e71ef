"""``prepare``: consolidate sources into a validated, de-duplicated, split manifest.

Output directory contract:
- ``manifest.csv``: path, content_hash, source, source_label, class, split, group, width, height, and the
  lesion / liver / fan annotation file of each image (empty: none; :mod:`liverscan.preparation.annotate`)
- ``rejects.csv``: path, source, source_label, reason - rejected images, and annotation files that do not fit
  their image (the image is kept, without that annotation)
- ``summary.json``: counts, class weights, duplicates, annotation counts, audit, warnings, versions
- ``config.yaml``: the effective configuration
- ``images.npy``: decoded, resized uint8 arrays in manifest row order (when caching is on)
- ``frames/``: the sampled frames of video sources, as PNG images (:mod:`liverscan.preparation.videos`)
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from liverscan.core.annotations import KINDS, pattern_problem
from liverscan.core.artifacts import (
    ANNOTATION_COLUMNS,
    CACHE,
    CONFIG_FILE,
    MANIFEST,
    MANIFEST_COLUMNS,
    REJECT_COLUMNS,
    REJECTS,
    SPLITS,
    SUMMARY,
)
from liverscan.core.classmap import map_labels, ordered_classes
from liverscan.core.config import Config
from liverscan.core.dataset import class_weights
from liverscan.core.dedup import link_groups, near_duplicate_pairs, perceptual_hash
from liverscan.core.errors import DataError, ImageDecodeError, RunDirError
from liverscan.core.fileio import csv_text, sha256_bytes, write_json_atomic, write_text_atomic
from liverscan.core.files import UNSUPPORTED
from liverscan.core.images import DECODER, decode
from liverscan.core.runinfo import utc_now, versions
from liverscan.core.sources import Candidate, explicit_group, scan_sources
from liverscan.core.sweeps import sweep_pairs, thumbnail
from liverscan.preparation import audit as audit_mod
from liverscan.preparation.annotate import Annotations, check, locate_all, reject_reason
from liverscan.preparation.split import assign_splits
from liverscan.preparation.videos import FRAMES_DIR, expand_videos, own_frames, prune_frames


@dataclass
class _Decoded:
    index: int
    content_hash: str = ""
    width: int = 0
    height: int = 0
    mean: float = 0.0
    phash: int = 0
    thumb: np.ndarray | None = None  # the 16 x 16 thumbnail frames of one sweep are compared by (liverscan.core.sweeps)
    error: str = ""
    pages: int = 1  # a multi-page TIFF: its page count (the first page is used)
    annotations: Annotations = field(default_factory=Annotations)


@dataclass
class PrepareResult:
    out_dir: Path
    summary: dict
    warnings: list[str]


def manifest_hash(rows: list[dict], annotation_hashes: list[dict[str, str]] | None = None) -> str:
    """Location-independent hash of a manifest: content, class, split and group of every row, and the content of
    its annotation files (``annotation_hashes[i]``: kind -> sha256) when it has any."""
    h = hashlib.sha256()
    for i, r in enumerate(rows):
        line = f"{r['content_hash']},{r['class']},{r['split']},{r['group']}"
        ann = annotation_hashes[i] if annotation_hashes else {}
        if ann:  # rows without annotations hash as they always did
            line += "".join(f",{kind}={ann[kind]}" for kind in KINDS if kind in ann)
        h.update(f"{line}\n".encode())
    return h.hexdigest()


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if (out / MANIFEST).exists() and not overwrite:
        raise RunDirError(f"{out}: already holds a prepared dataset; pass --overwrite to replace it")
    if not (out / MANIFEST).exists():  # not a prepared dataset: never write over a file of the same name
        for name in (REJECTS, SUMMARY, CACHE, CONFIG_FILE, FRAMES_DIR):
            if name == FRAMES_DIR and own_frames(out / name):  # left by a prepare that stopped before its manifest
                continue
            if (out / name).exists():
                raise RunDirError(
                    f"{out / name}: exists and was not written by liverscan prepare (the folder holds no {MANIFEST}); "
                    "choose another --out"
                )


def prepare_dataset(
    cfg: Config,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """Run the whole ``prepare`` stage and write its outputs into ``out_dir``."""
    t0 = time.perf_counter()
    data = cfg.data
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    for r, name in ((data.train_ratio, "train"), (data.val_ratio, "val"), (data.test_ratio, "test")):
        if r < 0:
            raise DataError(f"{name} ratio must be >= 0, got {r}")
    group_re = None
    if data.group_regex:
        try:
            group_re = re.compile(data.group_regex)
        except re.error as exc:
            raise DataError(f"invalid --group-regex {data.group_regex!r}: {exc}") from None
    problem = pattern_problem(data.masks) if data.masks else None
    if problem:
        raise DataError(f"--masks {problem}")

    scan_rejects: list[list[str]] = []  # CSV rows that name no file
    candidates, ignored, source_names = scan_sources(data.sources, scan_rejects)
    # frames are written over in place (the same video gives the same files), so the dataset being replaced
    # stays whole until the new manifest is written; frames it no longer lists are removed after that
    candidates = expand_videos(candidates, out, scan_rejects)
    candidates, located = locate_all(candidates, data.masks, ignored)
    if not candidates:
        raise DataError("the sources contain no image files")
    label_to_class = map_labels([c.source_label for c in candidates], data.class_map)

    out.mkdir(parents=True, exist_ok=True)
    size = cfg.preprocess.image_size
    n = len(candidates)
    tmp_cache = out / ".images.tmp.npy"
    buffer = np.lib.format.open_memmap(tmp_cache, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    try:
        decoded = _decode_all(candidates, located, buffer, size, cfg.preprocess.max_pixels, data.workers, progress)
        result = _consolidate(cfg, candidates, decoded, label_to_class, group_re)
        rows, rejects, ann_rejects, dup_info, conflicts, pairs, sweeps = result
        rejects = sorted(rejects + scan_rejects, key=lambda r: (r[0], r[1]))
        classes = ordered_classes({r["class"] for r in rows}, data.classes)
        if not rows:
            raise DataError("no valid images left after validation and de-duplication")
        ratios = (data.train_ratio, data.val_ratio, data.test_ratio)
        splits = assign_splits([r["group"] for r in rows], [r["class"] for r in rows], ratios, data.seed)
        for r, s in zip(rows, splits):
            r["split"] = s

        # write outputs ---------------------------------------------------
        manifest_rows = [[r[c] for c in MANIFEST_COLUMNS] for r in rows]
        write_text_atomic(out / MANIFEST, csv_text(MANIFEST_COLUMNS, manifest_rows))
        prune_frames(out / FRAMES_DIR, {r["path"] for r in rows})
        all_rejects = sorted(rejects + ann_rejects, key=lambda r: (r[0], r[1]))
        write_text_atomic(out / REJECTS, csv_text(REJECT_COLUMNS, all_rejects))
        if data.cache_arrays:
            _write_cache(out / CACHE, buffer, [r["_index"] for r in rows])
        elif (out / CACHE).exists():
            (out / CACHE).unlink()
    finally:
        del buffer
        tmp_cache.unlink(missing_ok=True)

    summary = _summary(
        cfg, rows, rejects, len(ann_rejects), dup_info, conflicts, pairs, classes, source_names, ignored, decoded,
        sweeps,
    )  # fmt: skip
    multi_page = {candidates[d.index].path: d.pages for d in decoded if d.pages > 1 and not d.error}
    if multi_page:
        summary["multi_page_files"] = multi_page
        summary["warnings"].append(_multi_page_warning(multi_page))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(out / SUMMARY, summary)
    cfg.save(out / CONFIG_FILE)
    return PrepareResult(out, summary, summary["warnings"])


def _multi_page_warning(pages: dict[str, int]) -> str:
    """'a.tif: TIFF has 3 pages; only the first is used' (one file), or the count and an example."""
    path, n = next(iter(sorted(pages.items())))
    if len(pages) == 1:
        return f"{path}: TIFF has {n} pages; only the first is used"
    return (
        f"{len(pages)} TIFF files have several pages; only the first page of each is used (e.g. {path}: {n} pages; "
        "all in summary.json multi_page_files)"
    )


def _decode_one(
    c: Candidate, annotations: dict[str, str], index: int, buffer: np.ndarray, size: int, max_pixels: int
) -> _Decoded:
    rec = _Decoded(index)
    try:
        raw = Path(c.path).read_bytes()
    except FileNotFoundError:
        rec.error = "file not found"
        return rec
    except OSError as exc:
        rec.error = f"cannot read file ({exc.strerror or exc})"
        return rec
    rec.content_hash = sha256_bytes(raw)
    if not raw:
        rec.error = "empty file (0 bytes)"
        return rec
    try:
        img = decode(raw, size=size, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        rec.error = exc.reason
        return rec
    buffer[index] = img.array
    rec.width, rec.height, rec.pages = img.width, img.height, img.pages
    rec.mean = float(img.array.mean())
    rec.phash = perceptual_hash(img.array)
    rec.thumb = thumbnail(img.array)
    rec.annotations = check(annotations, img.width, img.height)
    return rec


def _decode_all(candidates, located, buffer, size, max_pixels, workers, progress) -> list[_Decoded]:
    workers = workers or (os.cpu_count() or 1)
    out: list[_Decoded] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_decode_one, c, a, i, buffer, size, max_pixels)
            for i, (c, a) in enumerate(zip(candidates, located))
        ]
        for k, fut in enumerate(futures):
            out.append(fut.result())
            if progress:
                progress(k + 1, len(futures))
    return out


def _consolidate(cfg: Config, candidates, decoded, label_to_class, group_re):
    """Reject, de-duplicate, detect conflicts and build groups. Returns manifest rows etc."""
    data = cfg.data
    rejects: list[list[str]] = []
    annotation_rejects: list[list[str]] = []  # annotation files that do not fit their (kept) image
    valid = []
    for c, d in zip(candidates, decoded):
        if d.error:
            rejects.append([c.path, c.source, c.source_label, d.error])
        else:
            valid.append((c, d))

    # exact duplicates: same bytes
    by_hash: dict[str, list[tuple[Candidate, _Decoded]]] = defaultdict(list)
    for c, d in valid:
        by_hash[d.content_hash].append((c, d))
    kept: list[tuple[Candidate, _Decoded]] = []
    duplicates, conflicts = [], []
    seen_paths: set[str] = set()
    for h in sorted(by_hash):
        items = sorted(by_hash[h], key=lambda cd: (cd[0].path, cd[0].source))
        # the same file listed twice by one source is one candidate
        unique = []
        for c, d in items:
            key = f"{c.source}\0{c.path}"
            if key not in seen_paths:
                seen_paths.add(key)
                unique.append((c, d))
        classes = sorted({label_to_class[c.source_label] for c, _ in unique})
        if len(classes) > 1:
            conflicts.append(
                {
                    "content_hash": h,
                    "classes": classes,
                    "files": [{"path": c.path, "source": c.source, "label": c.source_label} for c, _ in unique],
                    "kept": bool(data.keep_conflicts),
                }
            )
            if not data.keep_conflicts:
                for c, _ in unique:
                    rejects.append(
                        [c.path, c.source, c.source_label, "label conflict: same image under " + "/".join(classes)]
                    )
                continue
            kept.extend(unique)  # all copies kept, grouped together below
            continue
        kept.append((unique[0][0], _with_duplicates_annotations(unique)))
        for c, _ in unique[1:]:
            duplicates.append({"path": c.path, "source": c.source, "duplicate_of": unique[0][0].path})
        for c, d in unique[1:]:  # a duplicate's annotation that does not fit is still reported
            annotation_rejects.extend(_annotation_rejects(c, d))
    kept.sort(key=lambda cd: (cd[0].path, cd[0].source))

    # groups: near-duplicates + explicit keys + identical content (kept conflicts)
    pairs = near_duplicate_pairs([d.phash for _, d in kept], data.near_duplicate_distance)
    keys = [explicit_group(c, group_re) for c, _ in kept]
    # frames of one sweep; files with an explicit group (a patient column, --group-regex) are left to it
    loose = [i for i, key in enumerate(keys) if not key and kept[i][1].thumb is not None]
    same = [(kept[i][0].source, kept[i][0].source_label, kept[i][1].width, kept[i][1].height) for i in loose]
    thumbs = [np.asarray(kept[i][1].thumb) for i in loose]
    sweeps = [(loose[a], loose[b]) for a, b in sweep_pairs(thumbs, same, data.sweep_correlation)]
    hash_keys = [d.content_hash for _, d in kept]
    roots = link_groups(len(kept), [(i, j) for i, j, _ in pairs] + sweeps, keys)
    roots = _merge_same_hash(roots, hash_keys)
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots):
        members[r].append(i)
    group_name = {}
    for r, idx in members.items():
        explicit = sorted(k for k in (keys[i] for i in idx) if k)
        group_name[r] = explicit[0] if explicit else min(hash_keys[i] for i in idx)[:16]

    rows = []
    for i, (c, d) in enumerate(kept):
        annotation_rejects.extend(_annotation_rejects(c, d))
        rows.append(
            {
                "path": c.path,
                "content_hash": d.content_hash,
                "source": c.source,
                "source_label": c.source_label,
                "class": label_to_class[c.source_label],
                "split": "",
                "group": group_name[roots[i]],
                "width": d.width,
                "height": d.height,
                **{col: d.annotations.paths.get(kind, "") for kind, col in ANNOTATION_COLUMNS.items()},
                "_index": d.index,
                "_mean": d.mean,
                "_annotation_hashes": d.annotations.hashes,
            }
        )
    rejects.sort(key=lambda r: (r[0], r[1]))
    return rows, rejects, annotation_rejects, duplicates, conflicts, pairs, sweeps


def _annotation_rejects(c: Candidate, d: _Decoded) -> list[list[str]]:
    return [[p, c.source, c.source_label, reject_reason(k, c.path, why)] for k, p, why in d.annotations.problems]


def _with_duplicates_annotations(unique: list[tuple[Candidate, _Decoded]]) -> _Decoded:
    """The kept copy of identical files, with the valid annotations its duplicates have and it lacks."""
    first = unique[0][1]
    merged = Annotations(dict(first.annotations.paths), dict(first.annotations.hashes), first.annotations.problems)
    for _, d in unique[1:]:
        for kind, path in d.annotations.paths.items():
            if kind not in merged.paths:
                merged.paths[kind] = path
                merged.hashes[kind] = d.annotations.hashes[kind]
    if merged.paths == first.annotations.paths:
        return first
    return replace(first, annotations=merged)


def _merge_same_hash(roots: list[int], hashes: list[str]) -> list[int]:
    first: dict[str, int] = {}
    remap: dict[int, int] = {}
    for i, h in enumerate(hashes):
        if h in first and roots[i] != roots[first[h]]:
            remap[roots[i]] = roots[first[h]]
        first.setdefault(h, i)
    if not remap:
        return roots

    def resolve(r: int) -> int:
        while r in remap:
            r = remap[r]
        return r

    return [resolve(r) for r in roots]


def _write_cache(path: Path, buffer: np.ndarray, indices: list[int]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(indices),) + buffer.shape[1:])
    for start in range(0, len(indices), 512):
        chunk = indices[start : start + 512]
        arr[start : start + len(chunk)] = buffer[chunk]
    arr.flush()
    del arr
    os.replace(tmp, path)


def _split_gaps(counts: dict[str, dict[str, int]], data, n_images: int) -> dict:
    """The splits the ratios ask for that hold no image (``empty``), and per class the non-empty splits asked
    for that hold none of it (``classes_missing``): training on one split needs validation images of every class,
    evaluating needs test images.  A split whose ratio is 0 (cross-validation needs none) is never a gap."""
    ratios = {"train": data.train_ratio, "val": data.val_ratio, "test": data.test_ratio}
    total = sum(ratios.values()) or 1.0
    wanted = [s for s in SPLITS if ratios[s] > 0]
    per_split = {s: sum(row[s] for row in counts.values()) for s in SPLITS}
    empty = [s for s in wanted if per_split[s] == 0]
    missing = {}
    for cls, row in counts.items():
        lacking = [s for s in wanted if s not in empty and row[s] == 0]
        if lacking:
            missing[cls] = lacking
    return {
        "ratios": "/".join(f"{round(100 * ratios[s] / total, 1):g}" for s in SPLITS),
        "n_images": n_images,
        "empty": empty,
        "classes_missing": missing,
    }


def grouping_rule(data) -> str:
    """How ``prepare`` decides which images share a fold, in words (recorded in ``summary.json``)."""
    parts = ["explicit groups (a group column, --group-regex)"]
    if data.near_duplicate_distance >= 0:
        parts.append(f"near-duplicates (perceptual hash within {data.near_duplicate_distance} bits)")
    if data.sweep_correlation <= 1:
        parts.append(
            f"frames of one sweep (one source, label and size, 16 x 16 thumbnails correlating at least "
            f"{data.sweep_correlation:g}; files without an explicit group)"
        )
    return ", linked with ".join(parts[:1] + [" and ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _summary(
    cfg, rows, rejects, n_annotation_rejects, duplicates, conflicts, pairs, classes, source_names, ignored, decoded,
    sweeps=(),
) -> dict:  # fmt: skip
    counts = {c: {s: 0 for s in SPLITS} for c in classes}
    for r in rows:
        counts[r["class"]][r["split"]] += 1
    train_labels = [r["class"] for r in rows if r["split"] == "train"]
    weights = class_weights(train_labels, classes)
    group_sizes = Counter(r["group"] for r in rows)
    group_classes: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        group_classes[r["group"]].add(r["class"])
    # explicit groups (a CSV group column, --group-regex) are named source/value or re/value; the
    # others were linked by near-duplicate pairs and carry a content hash as their name
    explicit = {g: n for g, n in group_sizes.items() if "/" in g}
    nd_sizes = sorted((n for g, n in group_sizes.items() if n > 1 and g not in explicit), reverse=True)
    group_splits: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        group_splits[r["group"]].add(r["split"])
    leaks = [g for g, s in group_splits.items() if len(s) > 1]
    audit = {
        "imbalance_ratio": audit_mod.imbalance_ratio([r["class"] for r in rows]),
        "near_duplicates": {
            "max_distance": cfg.data.near_duplicate_distance,
            "pairs": len(pairs),
            "groups": len(nd_sizes),
            "images_in_groups": int(sum(nd_sizes)),
            "largest": int(nd_sizes[0]) if nd_sizes else 0,
            "sizes": dict(sorted(Counter(nd_sizes).items())),
            "cross_class_groups": sum(1 for g, cl in group_classes.items() if len(cl) > 1),
        },
        "sweeps": {"min_correlation": cfg.data.sweep_correlation, "links": len(sweeps)},
        "explicit_groups": {"groups": len(explicit), "images": int(sum(explicit.values()))},
        "grouping": {"rule": grouping_rule(cfg.data), "groups": len(group_sizes)},
        "label_conflicts": conflicts,
        "single_source_classes": audit_mod.single_source_classes(
            [r["source"] for r in rows], [r["class"] for r in rows]
        ),
        "groups_split_across": len(leaks),
        "splits": _split_gaps(counts, cfg.data, len(rows)),
    }
    shortcut = audit_mod.shortcut_check(
        [r["width"] for r in rows],
        [r["height"] for r in rows],
        [r["_mean"] for r in rows],
        [r["class"] for r in rows],
        [r["group"] for r in rows],
        seed=cfg.data.seed,
    )
    audit["shortcut"] = asdict(shortcut) if shortcut else None
    reasons = Counter(r[3].split(":")[0] for r in rejects)
    public_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    annotations = {kind: sum(1 for r in rows if r[col]) for kind, col in ANNOTATION_COLUMNS.items()}
    annotations["rejected"] = n_annotation_rejects
    return {
        "created": utc_now(),
        "versions": versions(),
        "manifest_hash": manifest_hash(public_rows, [r["_annotation_hashes"] for r in rows]),
        "sources": source_names,
        "classes": classes,
        "image_size": cfg.preprocess.image_size,
        "decoder": DECODER,
        "cache": CACHE if cfg.data.cache_arrays else None,
        "n_candidates": len(decoded),
        "n_images": len(rows),
        "n_rejected": len(rejects),  # images; rejected annotation files are counted in "annotations"
        "reject_reasons": dict(sorted(reasons.items())),
        "n_ignored_non_image_files": len(ignored.by_reason.get(UNSUPPORTED, [])),
        "ignored_files": ignored.counts(),
        "exact_duplicates_removed": duplicates,
        "counts": counts,
        "source_label_counts": dict(sorted(Counter(f"{r['source']}:{r['source_label']}" for r in rows).items())),
        "class_weights": {c: round(w, 4) for c, w in weights.items()},
        # images with a valid annotation of each kind, and annotation files rejected (their images kept)
        "annotations": annotations,
        "audit": audit,
        "warnings": audit_mod.build_warnings(audit),
    }
