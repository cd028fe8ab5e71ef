from __future__ import annotations

import numpy as np
import pytest

from liverscan.core.model import build_model
from liverscan.serving.explain import GradCam, feature_map_model, gradcam_from_maps, head_weights, overlay


def test_closed_form_matches_gradient_tape():
    tf = pytest.importorskip("tensorflow")
    model = build_model(3, 64, weights="none")
    rng = np.random.default_rng(0)
    # make the head non-trivial
    head = model.get_layer("head")
    head.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in head.get_weights()])
    x = rng.integers(0, 255, size=(2, 64, 64, 3)).astype("float32")
    maps = np.asarray(feature_map_model(model)([x], training=False)[0]) + rng.uniform(0, 1, size=(2, 2, 2, 1280))
    w1, b1, w2, b2 = head_weights(model)
    nonzero = 0
    for c in range(3):
        a = tf.Variable(maps, dtype=tf.float64)
        with tf.GradientTape() as tape:
            f = tf.reduce_mean(a, axis=(1, 2))
            z = tf.matmul(tf.nn.relu(tf.matmul(f, w1) + b1), w2) + b2
            target = tf.reduce_sum(z[:, c])
        grads = tape.gradient(target, a).numpy()
        alpha = grads.mean(axis=(1, 2))  # Grad-CAM channel weights
        cam = np.maximum(np.einsum("nhwc,nc->nhw", maps, alpha), 0)
        peak = cam.reshape(2, -1).max(1)[:, None, None]
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        ours = gradcam_from_maps(maps, (w1, b1, w2, b2), [c, c])
        np.testing.assert_allclose(ours, cam, atol=1e-9)
        nonzero += int(ours.max() > 0)
    assert nonzero >= 1


@pytest.mark.slow
def test_multistage_grad_cam_is_the_gradient_on_the_last_stage():
    tf = pytest.importorskip("tensorflow")
    model = build_model(3, 64, weights="none", features="multistage")
    rng = np.random.default_rng(2)
    head = model.get_layer("head")
    head.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in head.get_weights()])
    x = rng.integers(0, 255, size=(2, 64, 64, 3)).astype("float32")
    last, pooled = (np.asarray(o, np.float64) for o in feature_map_model(model)([x], training=False))
    assert last.shape == (2, 2, 2, 1280) and pooled.shape == (2, 2048)
    np.testing.assert_allclose(pooled[:, -1280:], last.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    earlier = pooled[:, :-1280]
    w1, b1, w2, b2 = head_weights(model)
    for c in range(3):
        a = tf.Variable(last, dtype=tf.float64)
        with tf.GradientTape() as tape:
            f = tf.concat([tf.constant(earlier), tf.reduce_mean(a, axis=(1, 2))], axis=1)
            z = tf.matmul(tf.nn.relu(tf.matmul(f, w1) + b1), w2) + b2
            target = tf.reduce_sum(z[:, c])
        alpha = tape.gradient(target, a).numpy().mean(axis=(1, 2))
        cam = np.maximum(np.einsum("nhwc,nc->nhw", last, alpha), 0)
        peak = cam.reshape(2, -1).max(1)[:, None, None]
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        np.testing.assert_allclose(gradcam_from_maps(last, (w1, b1, w2, b2), [c, c], pooled), cam, atol=1e-9)
    heat = GradCam(model)(x, [0, 1])
    assert heat.shape == (2, 64, 64) and 0 <= heat.min() and heat.max() <= 1


def test_grad_cam_refuses_flip_averaged_features():
    from liverscan.core.errors import ModelError

    with pytest.raises(ModelError, match="mirror"):
        GradCam(build_model(2, 32, weights="none", flip_average=True))


def test_gradcam_shape_range_and_overlay():
    model = build_model(2, 64, weights="none")
    x = np.random.default_rng(1).integers(0, 255, size=(3, 64, 64, 3)).astype("float32")
    heat = GradCam(model)(x, [0, 1, 0])
    assert heat.shape == (3, 64, 64) and heat.min() >= 0 and heat.max() <= 1
    img = overlay(x[0].astype(np.uint8), heat[0])
    assert img.size == (64, 64)
