from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import one_line_error, runner
from conftest import class_image
from liverscan.core.config import Config, apply_overrides, load_config
from liverscan.core.errors import ConfigError
from liverscan.faces.cli import app


def test_defaults_are_the_papers():
    cfg = Config()
    assert cfg.preprocess.image_size == 160
    assert (cfg.data.train_ratio, cfg.data.val_ratio, cfg.data.test_ratio) == (0.70, 0.15, 0.15)
    assert cfg.model.dropout == 0.5 and cfg.model.dense_units == 128
    assert cfg.train.learning_rate == 1e-3 and cfg.train.batch_size == 32
    assert cfg.train.early_stopping_patience == 20 and cfg.train.lr_patience == 10 and cfg.train.lr_factor == 0.5
    assert cfg.augment.rotation_degrees == 15 and cfg.augment.zoom == 0.1 and cfg.augment.brightness == 0.2


def test_yaml_roundtrip(tmp_path):
    cfg = Config()
    cfg.train.epochs = 7
    p = tmp_path / "c.yaml"
    cfg.save(p)
    again = load_config(p)
    assert again == cfg


def test_partial_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochs": 3}, "data": {"classes": ["a", "b"]}}))
    cfg = load_config(p, ["train.learning_rate=0.01", "data.seed=7"])
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 0.01
    assert cfg.data.seed == 7 and cfg.data.classes == ["a", "b"]
    assert cfg.model.dropout == 0.5


def test_unknown_keys_rejected_with_names(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochz": 3, "lr": 1}, "extra": {}}))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "extra" in str(info.value)
    with pytest.raises(ConfigError, match="train.epochz"):
        apply_overrides(Config(), ["train.epochz=3"])
    p.write_text(yaml.safe_dump({"train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(p)


def test_type_errors():
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(Config(), ["train.epochs=many"])
    with pytest.raises(ConfigError, match="data.keep_conflicts"):
        apply_overrides(Config(), ["data.keep_conflicts=maybe"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.learning_rate=.nan", "train.learning_rate"),
        ("train.learning_rate=-0.1", "train.learning_rate"),
        ("data.workers=-3", "data.workers"),
        ("data.train_ratio=0", "data.train_ratio"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.backbone=resnet50", "model.backbone"),
        ("preprocess.image_size=8", "preprocess.image_size"),
        ("eval.review_confidence=2", "eval.review_confidence"),
        ("train.mode=turbo", "train.mode"),
        ("data.group_regex=(", "data.group_regex"),
    ],
)
def test_values_are_validated_when_loaded(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key, most",
    [("eval.bootstrap=1000000000", "eval.bootstrap", "100,000"), ("train.views=100000000", "train.views", "64")],
)
def test_counts_past_their_upper_bound_are_refused_naming_the_key(override, key, most):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')} must be at most {most} "):
        load_config(None, [override])
    r = runner.invoke(app, ["config", "--set", override])
    assert r.exit_code != 0 and f"{key} must be at most {most}" in " ".join(r.stderr.split()), r.output
    load_config(None, ["eval.bootstrap=100000", "train.views=64", "train.epochs=100000"])  # the bounds themselves pass


def test_yaml_file_values_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"train\.epochs must be >= 1"):
        load_config(p)


def test_bad_configuration_values_are_one_line(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  seed: 1 # caf\xe9\n".encode("latin-1"))
    cases = [
        (["config", "--set", "data.classes=[a, b"], "not valid YAML"),
        (["config", "--config", str(latin1)], "UTF-8"),
        (["config", "--config", str(tmp_path)], "is a directory"),
        (["config", "--set", "data.workers=-3"], "data.workers"),
    ]
    for args, fragment in cases:
        one_line_error(runner.invoke(app, args), fragment, code=2)  # a usage error


def test_non_finite_and_negative_learning_rates_and_empty_splits_are_refused(tmp_path):
    for value in ("nan", "-0.001", "inf"):
        one_line_error(runner.invoke(app, ["config", "--set", f"train.learning_rate={value}"]), "learning_rate", code=2)
    data = tmp_path / "d"
    for cls in ("normal", "tumor"):
        (data / cls).mkdir(parents=True)
        class_image(0, 1).save(data / cls / "a.png")
    for split in ("0/0/100", "0/100/0"):
        r = runner.invoke(app, ["prepare", str(data), "-o", str(tmp_path / "p"), "--split", split])
        one_line_error(r, "ratio", code=2)
    assert not (tmp_path / "p").exists()


def test_readme_config_round_trip_reaches_every_command(tmp_path):
    """``liverscan config`` prints a file that predict and prepare take back with ``--config``."""
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0 and "review_confidence: 0.6" in r.stdout
    for value in ("0.0", "1.0"):
        (tmp_path / f"{value}.yaml").write_text(
            r.stdout.replace("review_confidence: 0.6", f"review_confidence: {value}")
        )
    image = "examples/images/Normal/xu-92.jpg"
    flags = {}
    for value in ("0.0", "1.0"):
        args = ["predict", image, "--format", "jsonl", "--no-ood", "--config", str(tmp_path / f"{value}.yaml")]
        flags[value] = json.loads(runner.invoke(app, args).stdout)
    assert flags["0.0"]["needs_review"] is False and flags["1.0"]["needs_review"] is True
    data = tmp_path / "data"
    for ci, cls in enumerate(("normal", "tumor")):
        (data / cls).mkdir(parents=True)
        for k in range(4):
            class_image(ci, 10 * ci + k, size=32).save(data / cls / f"{k}.png")
    r = runner.invoke(app, ["prepare", str(data), "-o", str(tmp_path / "p"), "-c", str(tmp_path / "1.0.yaml")])
    assert r.exit_code == 0, r.output
    assert "review_confidence: 1.0" in (tmp_path / "p" / "config.yaml").read_text()


def test_a_damaged_saved_configuration_is_a_run_error_not_a_usage_error(tmp_path):
    from liverscan.core.config import load_saved_config
    from liverscan.core.errors import ConfigError, RunDirError

    saved = tmp_path / "config.yaml"
    saved.write_text("train: [unclosed\n")
    with pytest.raises(RunDirError, match="config.yaml: not valid YAML.*damaged") as caught:
        load_saved_config(saved)
    assert not isinstance(caught.value, ConfigError)  # exit 1 (a damaged run), not 2 (a usage error)
    saved.write_text("train:\n  epochs: 3\n")
    assert load_saved_config(saved).train.epochs == 3


def test_the_configuration_a_cross_validated_evaluation_saves_loads_back(tmp_path):
    """eval-cv/config.yaml records eval.split: cv; it must load again (to trace and re-run the evaluation)."""
    saved = tmp_path / "config.yaml"
    cfg = Config()
    cfg.eval.split = "cv"
    saved.write_text(yaml.safe_dump({"eval": {"split": cfg.eval.split}}))
    assert load_config(saved).eval.split == "cv"
    with pytest.raises(ConfigError, match="eval.split"):
        load_config(None, ["eval.split=fold3"])
