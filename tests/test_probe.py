"""The linear probe's row-space fit: the same model as a fit on all features, when features outnumber images."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from liverscan.core.probe import fit_linear_probe, row_space


def test_row_space_coordinates_keep_inner_products():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(30, 80))
    coords, back = row_space(xs)
    assert coords.shape == (30, 30) and back.shape == (30, 80)
    np.testing.assert_allclose(coords @ coords.T, xs @ xs.T, atol=1e-8)
    np.testing.assert_allclose(coords @ back, xs, atol=1e-8)
    tall = rng.normal(size=(80, 30))
    same, identity = row_space(tall)
    assert same is tall and np.array_equal(identity, np.eye(30))


def test_probe_with_more_features_than_images_equals_the_full_fit():
    rng = np.random.default_rng(3)
    n, f = 48, 160
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 5, size=f) + 2
    y = (x[:, :5].sum(1) / x[:, :5].sum(1).std() + rng.normal(0, 0.5, n) > 0).astype(int) + (x[:, 7] > 4)
    probe = fit_linear_probe(x, y, np.arange(n) // 2, 3, seed=0)
    scaler = StandardScaler().fit(x)
    full = LogisticRegression(C=probe.c, class_weight="balanced", max_iter=5000, tol=1e-8)
    expected = full.fit(scaler.transform(x), y).predict_proba(scaler.transform(x))
    held_out = rng.normal(size=(20, f)) * 3
    expected_new = full.predict_proba(scaler.transform(held_out))
    np.testing.assert_allclose(probe.probabilities(x), expected, atol=5e-3)
    # images never seen: the part of a new image outside the training rows' span is ignored by both fits
    np.testing.assert_allclose(probe.probabilities(held_out), expected_new, atol=5e-3)
