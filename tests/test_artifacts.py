from __future__ import annotations

import json

import pytest

from liverscan.core.artifacts import (
    CARD_FILE,
    CARD_SCHEMA_VERSION,
    ModelCard,
    load_run,
    read_card,
    read_history,
    write_card,
    write_history,
)
from liverscan.core.errors import RunDirError

V0_CARD = {  # the layout written before the card had a schema version
    "name": "old",
    "created": "2026-01-01T00:00:00+00:00",
    "intended_use": "Research use only",
    "task": "liver B-mode ultrasound image classification",
    "classes": ["normal", "tumor"],
    "class_map": {"benign": "tumor"},
    "input": {"size": [96, 96, 3], "scaling": "x / 127.5 - 1"},
    "architecture": {"backbone": "MobileNetV2", "head": "dense"},
    "build": {"n_classes": 2, "image_size": 96, "alpha": 1.0, "dropout": 0.5, "dense_units": 128},
    "training": {"epochs_run": 3},
    "validation": {"n": 10, "accuracy": 0.9},
    "operating_point": None,
    "test": {"n": 5},
}


def test_version_0_card_reads_and_round_trips(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps(V0_CARD))
    card = read_card(tmp_path)
    assert card.image_size == 96 and card.classes == ["normal", "tumor"] and card.n_classes == 2
    assert card.build == {"n_classes": 2, "alpha": 1.0, "dropout": 0.5, "dense_units": 128}
    assert card.extra == {"test": {"n": 5}}  # unknown keys kept
    write_card(tmp_path, card)
    raw = json.loads((tmp_path / CARD_FILE).read_text())
    assert raw["schema_version"] == CARD_SCHEMA_VERSION and raw["test"] == {"n": 5}
    assert "image_size" not in raw and "image_size" not in raw["build"]  # the size is stored once
    assert raw["input"]["size"] == [96, 96, 3]
    assert read_card(tmp_path) == card
    assert "# Model card: old" in (tmp_path / "model_card.md").read_text()


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"name": "x"}), "malformed model card"),
        (json.dumps({**V0_CARD, "schema_version": 99}), "newer than this liverscan"),
    ],
)
def test_bad_cards_are_clear_errors(tmp_path, text, match):
    (tmp_path / CARD_FILE).write_text(text)
    with pytest.raises(RunDirError, match=match):
        read_card(tmp_path)


def test_load_run_resolves_directories_and_files(tmp_path):
    with pytest.raises(RunDirError, match="no such run"):
        load_run(tmp_path / "missing")
    with pytest.raises(RunDirError, match="no model.keras"):
        load_run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"x")
    write_card(tmp_path, ModelCard.from_dict(V0_CARD))
    run = load_run(tmp_path / "model.keras")
    assert run.run_dir == tmp_path and run.image_size == 96 and run.source == tmp_path


def test_history_round_trip(tmp_path):
    rows = [
        {
            "epoch": 1,
            "stage": "head",
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "learning_rate": 1e-3,
            "seconds": 0.1,
        }
    ]
    write_history(tmp_path, rows)
    assert read_history(tmp_path) == [{**rows[0], "epoch": 1.0}]


def test_card_markdown_leaves_out_training_fields_that_do_not_apply():
    """A linear probe has no optimizer, batch or epochs: its card says C and how it was fitted, never "None"."""
    linear = {
        "mode": "linear probe",
        "loss": "class-balanced logistic loss (scikit-learn, lbfgs)",
        "C": 0.03162277660168379,
        "inner_folds": 5,
        "seconds": 139.7,
        "seed": 42,
        "backend": "tensorflow",
        "device": "cpu",
        "best": {"stage": "linear probe (refit on all images)", "epoch": None, "val_accuracy": None},
        "epochs_run": 0,
    }
    md = ModelCard.from_dict({**V0_CARD, "training": linear}).to_markdown()
    line = next(x for x in md.splitlines() if x.startswith("- Training:"))
    assert "None" not in md and "batch" not in line and "epoch" not in line and "limit" not in line
    assert "C = 0.03162 (inner 5-fold group cross-validation)" in line and "139.7 s on cpu (tensorflow)" in line
    mlp = {
        "mode": "paper",
        "loss": "weighted cross-entropy",
        "optimizer": "adam",
        "batch_size": 32,
        "epochs_run": 12,
        "epoch_limit": 50,
        "best": {"epoch": 9, "stage": "head"},
        "seed": 1,
    }
    line = next(x for x in ModelCard.from_dict({**V0_CARD, "training": mlp}).to_markdown().splitlines() if "Train" in x)
    assert line == "- Training: paper mode, loss weighted cross-entropy, adam, batch 32, 12 epochs (limit 50), " + (
        "best epoch 9 (head), seed 1"
    )


POINT = {
    "spec": "tumor>=0.9",
    "temperature": 1.3,
    "rule": {"type": "threshold", "class_index": 1, "class": "tumor", "threshold": 0.3},
}


def _shipped_copy(tmp_path):
    import shutil

    from liverscan.serving import default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    return model


@pytest.mark.parametrize(
    "edit, part",
    [
        (lambda card: card["lesion"].update(threshold=0.01), "lesion rule"),
        (lambda card: card["ood"].update(threshold=5.0), "out-of-distribution guard"),
        (lambda card: card.update(operating_point={**POINT, "temperature": 1.0}), "operating point"),
    ],
)
def test_an_edited_decision_rule_is_refused(tmp_path, edit, part):
    """What decides an answer (lesion rule, guard threshold, operating point) is sealed: edited by hand, the model
    does not load, with one line naming what was edited."""
    from typer.testing import CliRunner

    from cli_helpers import one_line_error
    from liverscan.faces.cli import app

    model = _shipped_copy(tmp_path)
    card = json.loads((model / CARD_FILE).read_text())
    edit(card)
    (model / CARD_FILE).write_text(json.dumps(card))
    r = CliRunner().invoke(app, ["predict", "examples/images/Normal/xu-92.jpg", "--model", str(model), "-f", "csv"])
    one_line_error(r, f"its {part}")
    with pytest.raises(RunDirError, match=part):
        load_run(model)


def test_a_card_without_a_seal_gets_a_notice(tmp_path):
    """Deleting the seal (and swapping the classes) is not silent: predict says the card cannot be checked."""
    from typer.testing import CliRunner

    from liverscan.faces.cli import app

    model = _shipped_copy(tmp_path)
    card = json.loads((model / CARD_FILE).read_text())
    del card["integrity"]
    card["classes"] = card["classes"][::-1]
    (model / CARD_FILE).write_text(json.dumps(card))
    r = CliRunner().invoke(app, ["predict", "examples/images/Normal/xu-92.jpg", "--model", str(model), "-f", "csv"])
    assert r.exit_code == 0, r.output
    assert "note: the model card carries no integrity seal" in " ".join(r.stderr.split())


def test_liverscan_reseals_the_rules_it_writes(tmp_path):
    """A card written by liverscan (evaluate fitting an operating point, export) seals its rules anew; the shipped
    model's card is sealed."""
    from liverscan.core.artifacts import read_card, seal_notices
    from liverscan.core.operating_point import OperatingPoint
    from liverscan.serving import default_model_dir

    assert seal_notices(read_card(default_model_dir())) == []
    model = _shipped_copy(tmp_path)
    run = load_run(model)
    run.card.operating_point = OperatingPoint.from_card(POINT)
    write_card(model, run.card)
    assert load_run(model).card.operating_point is not None
