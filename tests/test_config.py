from __future__ import annotations

import pytest
import yaml

from liverscan.core.config import Config, apply_overrides, load_config
from liverscan.core.errors import ConfigError


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


def test_yaml_file_values_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"train\.epochs must be >= 1"):
        load_config(p)
