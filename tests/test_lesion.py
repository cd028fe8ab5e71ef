"""Lesion localisation: the decoder finds made-up bright blobs; post-processing on synthetic maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverscan.core import lesion
from liverscan.core.annotations import polygon_area

SIZE = 32


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy images with one bright disc each, and the discs' masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    masks = np.empty((n, SIZE, SIZE), bool)
    for i in range(n):
        cy, cx = rng.integers(7, SIZE - 7, size=2)
        r = rng.uniform(3.5, 5.5)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grey = 50 + rng.normal(0, 12, size=(SIZE, SIZE)) + 150 * masks[i]
        images[i] = np.clip(grey, 0, 255)[..., None]
    return images, masks


def _stand_in_backbone():
    """A tiny frozen CNN with named stride-2/4/8 layers, in place of MobileNetV2."""
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="s2")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="s4")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="s8")(x)
    model = keras.Model(inp, x, name="stand_in")
    model.trainable = False
    return model


@pytest.mark.slow
def test_decoder_on_frozen_features_finds_bright_blobs():
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    layers = ("s2", "s4", "s8")
    backbone = _stand_in_backbone()
    features = lesion.multiscale_backbone(backbone, layers)
    train_x, train_m = _blobs(32, 1)
    feats = [np.asarray(f) for f in features.predict_on_batch(train_x / 127.5 - 1.0)]
    assert [f.shape[1:3] for f in feats] == [(16, 16), (8, 8), (4, 4)]
    targets = train_m.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4))[..., None].astype(np.float32)  # area coverage
    decoder = lesion.build_decoder([f.shape[1:] for f in feats], width=8)
    assert decoder.output_shape == (None, 16, 16, 1)
    decoder.compile(optimizer=keras.optimizers.Adam(0.02), loss=lesion.dice_bce_loss())
    decoder.fit(feats, targets, batch_size=32, epochs=15, verbose=0)  # ~1 s after tracing

    model = lesion.build_lesion_model(backbone, decoder, layers)
    test_x, test_m = _blobs(20, 2)
    probs = np.asarray(model.predict_on_batch(test_x))
    assert probs.shape == (20, SIZE, SIZE, 1) and 0 <= probs.min() and probs.max() <= 1
    hits = [lesion.pointing_hit(p[..., 0], m) for p, m in zip(probs, test_m)]
    dices = [lesion.dice(lesion.predicted_mask(p[..., 0]), m) for p, m in zip(probs, test_m)]
    assert np.mean(hits) >= 0.9
    assert np.mean(dices) >= 0.5


def test_dice_bce_loss_prefers_right_maps_and_takes_empty_targets():
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    loss = lesion.dice_bce_loss()
    y = np.zeros((2, 8, 8, 1), np.float32)
    y[0, 2:5, 2:5] = 1.0  # the second image has no lesion (a normal)
    right = np.where(y > 0, 8.0, -8.0).astype(np.float32)
    wrong = -right
    l_right = float(keras.ops.convert_to_numpy(loss(y, right)))
    l_wrong = float(keras.ops.convert_to_numpy(loss(y, wrong)))
    assert 0 <= l_right < 0.05 < 1.0 < l_wrong
    empty = float(keras.ops.convert_to_numpy(loss(np.zeros_like(y), np.full_like(y, -8.0))))
    assert np.isfinite(empty) and empty < 0.05  # the Dice smoothing term: ~0 probabilities still count


def test_per_image_dice_weighs_a_small_lesion_like_a_large_one():
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    y = np.zeros((3, 16, 16, 1), np.float32)
    y[0, 1:15, 1:15] = 1.0  # a large lesion
    y[1, 7:9, 7:9] = 1.0  # a small one; the third image has none
    logits = np.where(y > 0, 8.0, -8.0).astype(np.float32)
    logits[1] = -8.0  # the small lesion missed
    value = {k: float(keras.ops.convert_to_numpy(lesion.dice_bce_loss(dice=k)(y, logits))) for k in ("batch", "image")}
    assert value["batch"] < 0.1  # 4 of 200 lesion pixels missed: the batch Dice hardly notices
    assert 0.4 < value["image"] < 0.6  # one of two lesion images missed
    right = np.where(y > 0, 8.0, -8.0).astype(np.float32)
    assert float(keras.ops.convert_to_numpy(lesion.dice_bce_loss(dice="image")(y, right))) < 0.05
    no_lesion = float(keras.ops.convert_to_numpy(lesion.dice_bce_loss(dice="image")(y[2:], right[2:])))
    assert np.isfinite(no_lesion) and no_lesion < 0.05  # no lesion in view: BCE only, no 0/0
    with pytest.raises(ValueError, match="dice must be one of"):
        lesion.dice_bce_loss(dice="pixel")


def _two_blob_map() -> np.ndarray:
    p = np.zeros((40, 40), np.float32)
    p[5:15, 5:15] = 0.9  # 100 px, the most probable
    p[9, 9] = 0.99
    p[25:31, 20:36] = 0.7  # 96 px
    p[38, 38] = 0.8  # one stray pixel: under the minimum area
    return p


def test_peak_regions_and_outlines_on_a_synthetic_map():
    p = _two_blob_map()
    assert lesion.peak(p) == (9.5, 9.5, pytest.approx(0.99))
    found = lesion.regions(p, min_area=0.002)
    assert len(found) == 2
    first, second = found
    assert first.score == pytest.approx(0.99) and first.peak == (9.5, 9.5)
    assert first.bbox == (5.0, 5.0, 15.0, 15.0) and first.area_fraction == pytest.approx(100 / 1600)
    assert second.bbox == (20.0, 25.0, 36.0, 31.0) and second.mean == pytest.approx(0.7)
    for region, area in ((first, 100), (second, 96)):
        assert polygon_area(region.outline) == pytest.approx(area, rel=0.1)
        x0, y0, x1, y1 = region.bbox
        assert region.outline[:, 0].min() >= x0 - 0.5 and region.outline[:, 0].max() <= x1 + 0.5
        assert region.outline[:, 1].min() >= y0 - 0.5 and region.outline[:, 1].max() <= y1 + 0.5
    assert len(lesion.regions(p, min_area=0.0)) == 3
    assert lesion.regions(np.zeros((8, 8))) == []


def test_outline_of_a_square_and_two_pieces():
    m = np.zeros((10, 10), bool)
    m[2:6, 3:8] = True
    (poly,) = lesion.outline(m)
    assert polygon_area(poly) == pytest.approx(20, abs=2.5)  # corners cut by marching squares
    assert poly[:, 0].min() == pytest.approx(3.0) and poly[:, 0].max() == pytest.approx(8.0)
    m[8:10, 0:2] = True
    polys = lesion.outline(m)
    assert len(polys) == 2 and polygon_area(polys[0]) > polygon_area(polys[1])


def test_mask_evidence_and_scores():
    p = _two_blob_map()
    mask = lesion.predicted_mask(p)
    assert mask.sum() == 196 and not mask[38, 38]
    ev = lesion.evidence(p)
    assert ev["max"] == pytest.approx(0.99) and ev["count"] == 2
    assert ev["area_fraction"] == pytest.approx(196 / 1600)
    assert set(ev) == {"max", "area_fraction", "count", "mean", "top_mean"}
    quiet = lesion.evidence(np.full((40, 40), 0.1, np.float32))
    assert quiet["count"] == 0 and quiet["area_fraction"] == 0

    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert lesion.dice(a, b) == pytest.approx(0.5) and lesion.iou(a, b) == pytest.approx(25 / 75)
    assert lesion.dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    big = np.zeros((400, 400), bool)
    big[50:150, 50:150] = True  # the map's first blob, scaled by 10
    assert lesion.pointing_hit(p, big)
    assert not lesion.pointing_hit(p, ~big)


def test_upsample_squashes_like_the_images():
    p = np.zeros((4, 4), np.float32)
    p[:2, :2] = 1.0
    up = lesion.upsample(p, 80, 60)
    assert up.shape == (60, 80) and up.dtype == np.float32
    assert up[5, 5] == pytest.approx(1.0) and up[55, 75] == pytest.approx(0.0)


@pytest.mark.slow  # two MobileNetV2 builds and a joint graph per case: about 5 s each
@pytest.mark.parametrize("features,zoom,flip", [("last", 1, False), ("multistage", 1, False), ("last", 2, True)])
def test_a_head_tuned_from_block_6_shares_the_classifier_backbone_below_it(features, zoom, flip):
    """The joint graph runs the layers below the head's first tuned layer once: its outputs equal the classifier's
    and the head's own, it holds the classifier backbone's layers and only the head's tuned ones, and a head
    tuned from the first layer on (or another architecture) shares nothing."""
    from liverscan.core.keras_env import import_keras
    from liverscan.core.model import backbone_of, build_backbone, build_model, predict_outputs, with_features

    keras = import_keras()
    keras.utils.set_random_seed(0)
    clf = build_model(2, image_size=SIZE, weights="none", head="linear", features=features)
    own = build_backbone(SIZE, "none")
    own.set_weights(backbone_of(clf).get_weights() if features == "last" else _weights_by_name(clf, own))
    tuned_from = [layer.name for layer in own.layers].index("block_6_expand")
    rng = np.random.default_rng(0)
    for layer in own.layers[tuned_from:]:  # "fine-tuned": every weight from block_6_expand on moves
        layer.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(w.dtype) for w in layer.get_weights()])
    head = lesion.build_lesion_model(own, width=4, zoom=zoom, flip=flip)  # its other passes run on its own
    logits = head.get_layer("lesion_decoder").get_layer("lesion_logits")
    logits.set_weights([logits.get_weights()[0] * np.float32(3000.0), logits.get_weights()[1]])  # maps not all 0.5

    joint = lesion.shared_backbone_model(clf, head)
    assert joint is not None
    names = {w.path.split("/")[0] for w in joint.weights}
    assert "lesion_tuned_layers" not in names  # weights are the models' own, not copies
    images = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.float32)
    probs, pooled, maps = (np.asarray(a) for a in joint(images))
    ref_p, ref_f = predict_outputs(with_features(clf), images)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)
    np.testing.assert_allclose(pooled, ref_f, atol=1e-4)
    assert np.isfinite(maps).all() and float(maps.std()) > 1e-2
    np.testing.assert_allclose(maps[..., 0], lesion.predict_maps(head, images), atol=1e-4)
    rest = joint.get_layer("lesion_tuned_layers")
    assert lesion.first_unshared_layer(joint) == "block_6_expand"
    assert "block_5_add" not in {layer.name for layer in rest.layers[1:]}  # the shared part runs once

    mine = head.get_layer("multiscale")  # the head's backbone layers (with a zoom: its own copy of them)
    for layer in own.layers[1:tuned_from]:  # tuned from the first layer on: two passes
        theirs = mine.get_layer(layer.name)
        theirs.set_weights([w + np.float32(0.01) for w in theirs.get_weights()])
    assert lesion.shared_backbone_model(clf, head) is None


def _weights_by_name(clf, own) -> list:
    from liverscan.core.model import backbone_of

    theirs = backbone_of(clf)
    return [w for layer in own.layers if layer.weights for w in theirs.get_layer(layer.name).get_weights()]


def test_a_zoomed_head_averages_its_pass_on_the_image_and_on_it_upsampled():
    """zoom=2: the map is the mean of the head's probabilities on the image and on it upsampled to twice the size
    (its logits brought back to S), computed here from the model's own backbone and decoder step by step."""
    from liverscan.core.keras_env import import_keras
    from liverscan.core.model import build_backbone

    keras = import_keras()
    ops = keras.ops
    keras.utils.set_random_seed(0)
    plain = lesion.build_lesion_model(build_backbone(SIZE, "none"), width=4)
    logits = plain.get_layer("lesion_decoder").get_layer("lesion_logits")
    logits.set_weights([logits.get_weights()[0] * np.float32(3000.0), logits.get_weights()[1]])  # maps not all 0.5
    zoomed = lesion.build_lesion_model(build_backbone(SIZE, "none"), width=4, zoom=2)
    zoomed.set_weights(plain.get_weights())
    assert lesion.zoom_of(zoomed) == 2 and lesion.zoom_of(plain) == 1
    assert zoomed.get_layer("multiscale").input_shape[1:3] == (None, None)  # one backbone for both sizes
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    features, decoder = zoomed.get_layer("multiscale"), zoomed.get_layer("lesion_decoder")

    def probability(x, factor):
        out = decoder(list(features(x / 127.5 - 1.0)))
        return ops.sigmoid(ops.image.resize(out, (SIZE, SIZE), "bilinear")) if factor else ops.sigmoid(out)

    at_1 = ops.convert_to_numpy(probability(images, 1))[..., 0]
    big = ops.image.resize(images, (2 * SIZE, 2 * SIZE), "bilinear")
    at_2 = ops.convert_to_numpy(probability(big, 1))[..., 0]
    np.testing.assert_allclose(lesion.predict_maps(plain, images), at_1, atol=1e-4)
    got = lesion.predict_maps(zoomed, images)
    assert got.shape == (2, SIZE, SIZE) and float(np.abs(at_2 - at_1).max()) > 1e-2  # the passes differ
    np.testing.assert_allclose(got, (at_1 + at_2) / 2, atol=1e-4)

    mirrored = lesion.build_lesion_model(build_backbone(SIZE, "none"), width=4, zoom=2, flip=True)
    mirrored.set_weights(plain.get_weights())  # the mirror layer has no weights
    assert lesion.flip_of(mirrored) and not lesion.flip_of(zoomed) and lesion.zoom_of(mirrored) == 2
    back = images[:, :, ::-1]
    at_1m = ops.convert_to_numpy(probability(back, 1))[..., 0][:, :, ::-1]
    big_m = ops.image.resize(back, (2 * SIZE, 2 * SIZE), "bilinear")
    at_2m = ops.convert_to_numpy(probability(big_m, 1))[..., 0][:, :, ::-1]
    assert float(np.abs(at_1m - at_1).max()) > 1e-2  # the mirror's map, mirrored back, differs
    np.testing.assert_allclose(lesion.predict_maps(mirrored, images), (at_1 + at_2 + at_1m + at_2m) / 4, atol=1e-4)


def _faint_lesion_map() -> np.ndarray:
    """A faint lesion (peak 0.35, its shoulder 0.2) and a smaller faint spot elsewhere."""
    p = np.full((40, 40), 0.02, np.float32)
    p[10:16, 10:16] = 0.2
    p[12:14, 12:14] = 0.35
    p[30, 30] = 0.3  # one pixel: under min_area
    return p


def test_the_legacy_rule_is_the_thresholded_mask():
    p = _two_blob_map()
    rule = lesion.LesionRule()
    assert np.array_equal(rule.mask(p), lesion.predicted_mask(p))
    assert [r.area_fraction for r in rule.regions(p)] == [r.area_fraction for r in lesion.regions(p)]
    assert rule.mask(p, lesion_probability=1.0).sum() == lesion.predicted_mask(p).sum()  # no gate: ignored
    assert rule.describe() == "p >= 0.5 over at least 0.002 of the image"


def test_the_extent_rule_outlines_a_peak_relative_region():
    p = _two_blob_map()
    rule = lesion.LesionRule(extent=0.5, floor=0.2)
    mask = rule.mask(p)
    # the peak is 0.99: pixels >= 0.495 - the 0.9 square and the 0.7 strip (96 px, over min_area); the stray 0.8
    # pixel is under min_area and is not the peak's region
    assert mask.sum() == 100 + 96 and not mask[38, 38]
    assert [round(r.area_fraction * 1600) for r in rule.regions(p)] == [100, 96]


def test_the_gate_shows_a_faint_lesion_only_when_the_classifier_says_tumour():
    p = _faint_lesion_map()
    rule = lesion.LesionRule(extent=0.5, floor=0.1, gate=0.9, gate_classes=("tumor",))
    assert not rule.mask(p).any() and rule.regions(p) == []  # peak 0.35 < threshold 0.5, no classifier
    assert not rule.mask(p, lesion_probability=0.6).any()  # the classifier is unsure
    mask = rule.mask(p, lesion_probability=0.95)
    # from the peak down to max(0.1, 0.175): the 6 x 6 shoulder; the lone 0.3 pixel elsewhere is under min_area
    assert mask.sum() == 36 and mask[10:16, 10:16].all() and not mask[30, 30]
    (only,) = rule.regions(p, 0.95)
    assert only.peak == (12.5, 12.5) and round(only.area_fraction * 1600) == 36
    assert rule.lesion_probability({"normal": 0.05, "tumor": 0.95}) == pytest.approx(0.95)
    assert lesion.LesionRule(extent=0.5, floor=0.4, gate=0.9, gate_classes=("tumor",)).mask(p, 0.95).sum() == 0


def test_the_peaks_own_region_is_kept_under_the_minimum_area():
    p = np.zeros((40, 40), np.float32)
    p[5, 5] = 0.9  # a one-pixel lesion (1/1600 < 0.002)
    p[20:30, 20:30] = 0.3
    assert not lesion.LesionRule().mask(p).any()
    kept = lesion.LesionRule(extent=0.5, floor=0.2).mask(p)
    assert kept.sum() == 1 and kept[5, 5]


def test_a_rule_goes_through_the_model_card():
    rule = lesion.LesionRule(0.5, 0.002, 0.5, 0.2, 0.9, ("benign", "malignant"))
    again = lesion.LesionRule.from_entry(json.loads(json.dumps({"file": "lesion.keras", **rule.to_entry()})))
    assert again == rule
    assert again.lesion_probability({"benign": 0.5, "malignant": 0.45, "normal": 0.05}) == pytest.approx(0.95)
    old = lesion.LesionRule.from_entry({"file": "lesion.keras", "threshold": 0.4, "min_area": 0.001})
    assert old == lesion.LesionRule(threshold=0.4, min_area=0.001)  # an older card: p >= threshold
    assert lesion.LesionRule.from_entry({"gate": 0.9, "extent": 0.5}).gate is None  # a gate needs its classes
    assert "or the classifier gives benign/malignant p >= 0.9" in rule.describe()
