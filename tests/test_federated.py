"""Federated training: the exact aggregation equals the pooled fit, sites send aggregates only, faults."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from liverscan.core import guard
from liverscan.federated import gaussian, linear, stats
from liverscan.federated.coordinator import Coordinator, Expectation, FederationError
from liverscan.federated.messages import SCHEMA, MessageError, check_reply
from liverscan.federated.simulate import LocalTransport
from liverscan.federated.site import Site, SiteData

CLASSES = ["normal", "fatty", "tumor"]
F = 24  # features: different from every site's image counts, so a per-image array cannot pass for an aggregate


def _split(rng, n: int, p, shift: float) -> SiteData:
    y = rng.choice(len(p), n, p=p)
    x = rng.normal(size=(n, F)) + 1.5 * np.eye(len(p), F)[y] + shift
    return SiteData(x.astype(np.float32), y, np.arange(n).astype(str).astype(object))


def _sites(seed: int = 0, classes=CLASSES, alone: bool = False) -> list[Site]:
    rng = np.random.default_rng(seed)
    k = len(classes)
    mixes = [np.full(k, 1 / k), np.r_[np.full(k - 1, 0.1), 1.0] / (0.1 * (k - 1) + 1), np.full(k, 1 / k)]
    sizes = [(90, 31, 33), (57, 19, 22), (37, 13, 17)]
    return [
        Site(
            f"site{i}",
            list(classes),
            "backbone",
            {s: _split(rng, n, mixes[i], 0.3 * i) for s, n in zip(("train", "val", "test"), sizes[i])},
            compare_alone=alone,
        )
        for i in range(3)
    ]


def _pooled(sites: list[Site], split: str = "train"):
    x = np.concatenate([s.splits[split].features for s in sites]).astype(np.float64)
    return x, np.concatenate([s.splits[split].y for s in sites])


def test_moments_combine_to_the_pooled_standardisation():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (7, 40, 13)]
    total = stats.combine([stats.Moments.of(p) for p in parts])
    pooled = np.concatenate(parts)
    assert total.n == 60
    np.testing.assert_allclose(total.mean, pooled.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.scale, pooled.std(0), rtol=1e-12)


@pytest.mark.parametrize("classes", [CLASSES, ["normal", "tumor"]], ids=["three classes", "two classes"])
def test_federated_probe_equals_the_centralised_logistic_regression(classes, short_c_grid):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sites = _sites(classes=classes)
    result = Coordinator(LocalTransport(sites), Expectation(list(classes), "backbone"), c=0.05).run()
    x, y = _pooled(sites)
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=0.05, class_weight="balanced", tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
    coef, intercept = clf.coef_, clf.intercept_
    if len(classes) == 2:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    w = coef.T / scaler.scale_[:, None]
    b = intercept - scaler.mean_ @ w
    assert np.abs(result.weights - w).max() < 1e-5 * np.abs(w).max()
    x_test, _ = _pooled(sites, "test")
    np.testing.assert_allclose(x_test @ result.weights + result.bias, x_test @ w + b, atol=1e-4)
    assert result.rounds[0]["kind"] == "hello" and {r["kind"] for r in result.rounds} >= {"moments", "loss"}


def test_gaussian_guard_from_summed_moments_equals_the_pooled_fit():
    sites = _sites()
    x, y = _pooled(sites)
    parts = [gaussian.site_moments(s.splits["train"].features, s.splits["train"].y, 3) for s in sites]
    federated = gaussian.fit_from_moments(parts)
    pooled = guard.fit(x, y, method="mahalanobis", shrinkage="oas")
    assert federated.shrinkage == pytest.approx(pooled.shrinkage, rel=1e-9)
    queries, _ = _pooled(sites, "test")
    np.testing.assert_allclose(guard.scores(federated, queries), guard.scores(pooled, queries), rtol=1e-5)


def test_histogram_threshold_and_auc_match_the_exact_ones():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    scores = rng.gamma(4.0, 2.0, 500)
    counts = stats.histogram(scores, stats.OOD_EDGES)
    threshold = stats.quantile_from_histogram(counts, stats.OOD_EDGES, 0.95)
    exact = guard.calibrate_threshold(scores, 0.95)
    assert exact <= threshold <= exact * 1.01  # at least 95% kept, within one bin
    assert guard.calibrate_threshold(stats.pseudo_scores(counts, stats.OOD_EDGES), 0.95) == threshold
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    auc = stats.auc_from_histograms(
        stats.histogram(p[y == 1], stats.PROBABILITY_EDGES), stats.histogram(p[y == 0], stats.PROBABILITY_EDGES)
    )
    assert auc == pytest.approx(roc_auc_score(y, p), abs=2e-3)


def test_no_message_from_a_site_carries_per_image_data(short_c_grid):
    from liverscan.federated.coordinator import MlpSettings

    sites = _sites()
    sites[0].compare_alone = True  # its comparison model travels as counts too
    transport = LocalTransport(sites, record=True)
    Coordinator(transport, Expectation(CLASSES, "backbone"), c=0.1).run()
    mlp = MlpSettings(rounds=2, local_epochs=1, hidden=8)
    Coordinator(transport, Expectation(CLASSES, "backbone"), head="mlp", mlp_settings=mlp).run()
    sizes = {len(s.splits[k].y) for s in sites for k in ("train", "val", "test")}
    kinds = set()
    for name, request, reply in transport.sent:
        kinds.add(request["kind"])
        assert set(reply) == set(SCHEMA[request["kind"]])  # only the fields the schema lists
        for key, value in reply.items():
            shape = np.shape(value)
            assert not sizes & set(shape), f"{name} sent {key} with shape {shape}: one row per image"
    assert kinds == set(SCHEMA) - {"val_loss"}
    # the check the coordinator applies to every reply refuses a per-image array
    with pytest.raises(MessageError, match="scores has fields|fields"):
        check_reply("guard_histogram", {"counts": np.zeros(3), "source": "val", "scores": np.zeros(90)}, {"O": 3})


def test_a_site_that_dies_mid_training_is_dropped_and_recorded(short_c_grid):
    sites = _sites()
    sites[2].compare_alone = True
    calls = {"n": 0}
    original = sites[2].handle

    def dies_in_the_third_loss_round(request):
        if request["kind"] == "loss":
            calls["n"] += 1
            if calls["n"] == 3:
                raise ConnectionError("site lost power")
        return original(request)

    sites[2].handle = dies_in_the_third_loss_round  # type: ignore[method-assign]
    transport = LocalTransport(sites)
    result = Coordinator(transport, Expectation(CLASSES, "backbone"), c=0.1).run()
    dropped = [e for e in result.events if e["event"] == "dropped"]
    assert dropped and dropped[0]["site"] == "site2" and "lost power" in dropped[0]["why"]
    assert any(e["event"] == "rejoined" and e["site"] == "site2" for e in result.events)  # it answers again
    assert result.optimiser["restarts"] >= 1 and result.optimiser["converged"]
    assert "test_metrics" in result.sites["site2"]
    alone = result.sites["site2"]["test_metrics"]["this_site_alone"]
    assert alone["n"] == 17 and alone["auc"] is not None and alone["C"] is not None


def test_training_stops_when_fewer_than_the_minimum_sites_answer():
    sites = _sites()
    transport = LocalTransport(sites)
    original = sites[1].handle

    def unplugged(request):
        if request["kind"] == "loss":
            transport.down.add("site1")
        return original(request)

    sites[1].handle = unplugged  # type: ignore[method-assign]
    with pytest.raises(FederationError, match="fewer than the minimum 3"):
        Coordinator(transport, Expectation(CLASSES, "backbone"), c=0.1, min_sites=3).run()


@pytest.mark.parametrize(
    "change, message",
    [("classes", "classes \\['normal', 'tumor', 'fatty'\\] differ"), ("fingerprint", "backbone other differs")],
)
def test_a_site_with_other_classes_or_another_backbone_is_refused(change, message):
    sites = _sites()
    if change == "classes":
        sites[1].classes = ["normal", "tumor", "fatty"]
    else:
        sites[1].fingerprint = "other"
    with pytest.raises(FederationError, match=f"site site1: {message}"):
        Coordinator(LocalTransport(sites), Expectation(CLASSES, "backbone"), c=0.1).run()


def test_the_loss_gradient_is_exact():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    mean, scale, cw = x.mean(0), x.std(0), np.array([1.0, 2.0, 0.5])
    theta = rng.normal(size=15) * 0.3

    def f(t):
        w, b = linear.unpack(t, 4, 3)
        return linear.objective([linear.site_loss(x, y, mean, scale, cw, w, b)], w, 0.7)

    _, grad = f(theta)
    eps = 1e-6
    numeric = np.array([(f(theta + eps * e)[0] - f(theta - eps * e)[0]) / (2 * eps) for e in np.eye(15)])
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


# ------------------------------------------------------------------ end to end


def _prepared_sites(base, sizes=(16, 10)):
    """Two sites' prepared folders of separable 32 x 32 images (random backbone, linear head, no export)."""
    from conftest import class_image, tiny_config
    from liverscan.preparation.prepare import prepare_dataset

    out = []
    for s, n in enumerate(sizes):
        raw = base / f"raw{s}"
        for ci, cat in enumerate(["normal", "fatty", "tumor"]):
            (raw / cat).mkdir(parents=True)
            for k in range(n):
                class_image(ci, seed=500 * s + 1000 * ci + k).save(raw / cat / f"{cat}_{k:02d}.png")
        cfg = tiny_config(raw)
        cfg.model.head = "linear"
        prepare_dataset(cfg, base / f"site{s}")
        out.append(base / f"site{s}")
    return out


@pytest.mark.slow
def test_simulate_writes_a_run_that_predicts_like_any_other(tmp_path, short_c_grid):
    import json

    from cli_helpers import runner
    from liverscan.faces.cli import app

    sites = _prepared_sites(tmp_path)
    run = tmp_path / "run"
    result = runner.invoke(app, ["federate", "simulate", *map(str, sites), "--out", str(run), "--c", "0.1"])
    assert result.exit_code == 0, result.output
    assert "Federated over 2 sites" in result.output
    card = json.loads((run / "model_card.json").read_text())
    fed = card["federated"]
    assert sorted(fed["sites"]) == ["site0", "site1"] and fed["sites"]["site1"]["images"]["train"] > 0
    assert fed["rounds"] == len(fed["per_round"]) and fed["bytes_from_sites"] > 0
    assert card["ood"]["method"] == "mahalanobis" and "summed per-class moments" in card["ood"]["kind"]
    assert "this_site_alone" in fed["sites"]["site0"]["test_metrics"]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    images = tmp_path / "raw1" / "tumor"
    out = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(images), "--model", str(run), "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    from cli_helpers import csv_rows

    rows = csv_rows(out)
    header, body = rows[0], rows[1:]
    assert len(body) == 10
    assert all(r[header.index("predicted_class")] == "tumor" for r in body)
    assert all(r[header.index("in_distribution")] == "true" for r in body)  # the Gaussian guard is applied


def _start(args: list[str], log) -> subprocess.Popen:
    """``liverscan ARGS`` as a child process in its own session (so the test can stop it and all it started)."""
    return subprocess.Popen(
        [sys.executable, "-m", "liverscan", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop_group(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 30) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(proc.name))
    return alive


@pytest.mark.slow
def test_a_real_coordinator_and_two_sites_on_loopback_survive_a_site_killed_mid_run(tmp_path):
    """The coordinator (a Flower SuperLink and the ServerApp) and two site processes (SuperNodes) on loopback:
    one site is killed mid-run; training goes on with the other, the card records it, nothing is left running."""
    pytest.importorskip("flwr", reason='needs the federated extra: pip install "liverscan[federated]"')
    import json
    import socket
    import time

    sites = _prepared_sites(tmp_path)
    run = tmp_path / "run"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("server", "site0", "site1")}
    server = _start(
        ["federate", "server", "--out", str(run), "--config", str(sites[0] / "config.yaml"), "--address", address,
         "--sites", "2", "--min-sites", "1", "--c", "0.1", "--max-rounds", "6", "--round-timeout", "20"],
        logs["server"],
    )  # fmt: skip
    started = [server]
    try:
        time.sleep(3)
        site0 = _start(["federate", "site", "--data", str(sites[0]), "--server", address], logs["site0"])
        site1 = _start(["federate", "site", "--data", str(sites[1]), "--server", address], logs["site1"])
        started += [site0, site1]
        deadline = time.monotonic() + 400
        while "round 10 " not in (tmp_path / "server.log").read_text(errors="replace"):
            assert server.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no tenth round"
            time.sleep(1)
        _stop_group(site1, signal.SIGKILL)  # the site dies: no goodbye
        assert server.wait(600) == 0, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    finally:
        for proc in reversed(started):
            _stop_group(proc)
        for fh in logs.values():
            fh.close()
    card = json.loads((run / "model_card.json").read_text())
    fed = card["federated"]
    assert fed["engine"].startswith("Flower deployment") and sorted(fed["sites"]) == ["site0", "site1"]
    dropped = [e for e in fed["events"] if e["event"] == "dropped"]
    assert [e["site"] for e in dropped] == ["site1"], fed["events"]
    assert fed["per_round"][-1]["sites"] == ["site0"] and fed["per_round"][0]["bytes_from_sites"] > 0
    assert "test_metrics" in fed["sites"]["site0"] and "test_metrics" not in fed["sites"]["site1"]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert (run / "model.keras").is_file() and (run / "ood_reference.npz").is_file()
    for proc in started:
        assert not _group_alive(proc.pid), f"processes of {proc.args[3:5]} still running"


def test_a_stopped_coordinator_resumes_from_its_saved_progress(tmp_path, short_c_grid):
    from liverscan.federated.coordinator import Progress

    saved = tmp_path / "federation_progress.npz"
    whole = Coordinator(LocalTransport(_sites()), Expectation(CLASSES, "backbone")).run()
    sites = _sites()
    original, calls = sites[0].handle, {"loss": 0}

    def stopped_in_the_thirtieth_loss_round(request):
        if request["kind"] == "loss":
            calls["loss"] += 1
            if calls["loss"] == 30:
                raise KeyboardInterrupt  # Ctrl+C of the coordinator, mid-fit
        return original(request)

    sites[0].handle = stopped_in_the_thirtieth_loss_round  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        Coordinator(
            LocalTransport(sites), Expectation(CLASSES, "backbone"), save_progress=lambda p: p.save(saved)
        ).run()
    progress = Progress.load(saved)
    assert progress.finished and progress.current is not None and progress.theta is not None
    resumed = Coordinator(LocalTransport(_sites()), Expectation(CLASSES, "backbone"), progress=progress).run()
    assert resumed.c == whole.c
    np.testing.assert_allclose(resumed.weights, whole.weights, atol=1e-5 * np.abs(whole.weights).max())
    loss_rounds = [sum(r["kind"] == "loss" for r in x.rounds) for x in (whole, resumed)]
    assert loss_rounds[1] < loss_rounds[0] - 20, loss_rounds


def test_the_mlp_head_learns_by_fedavg_and_fedprox_keeps_sites_near_the_global_weights():
    from liverscan.federated import mlp
    from liverscan.federated.coordinator import MlpSettings

    sites = _sites()
    settings = MlpSettings(rounds=8, local_epochs=2, hidden=16)
    result = Coordinator(
        LocalTransport(sites), Expectation(CLASSES, "backbone"), head="mlp", mlp_settings=settings
    ).run()
    history = result.optimiser["history"]
    assert result.optimiser["strategy"] == "FedAvg" and len(history) == 8
    assert history[-1]["val_loss"] < history[0]["val_loss"] and result.pooled["accuracy"] > 0.5  # chance: 1/3
    best = max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert result.optimiser["best_round"] == best["round"]
    train = sites[1].splits["train"]
    start = mlp.init(F, 16, 3, 0)
    common = dict(epochs=5, learning_rate=0.01, batch_size=16, dropout=0.0, seed=1)
    free, _ = mlp.local_train(start, train.features, train.y, np.ones(3), mu=0.0, **common)
    held, _ = mlp.local_train(start, train.features, train.y, np.ones(3), mu=10.0, **common)
    drift = [sum(float(((p[k] - start[k]) ** 2).sum()) for k in mlp.NAMES) for p in (free, held)]
    assert drift[1] < 0.5 * drift[0]


@pytest.mark.slow
def test_a_federated_mlp_head_is_written_into_the_model(tmp_path):
    from liverscan.core.config import Config
    from liverscan.core.model import feature_extractor, head_of
    from liverscan.federated import mlp
    from liverscan.federated.coordinator import MlpSettings
    from liverscan.federated.run import backbone, write_run

    cfg = Config()
    cfg.preprocess.image_size, cfg.model.weights, cfg.model.head, cfg.model.dense_units = 32, "none", "mlp", 16
    model = backbone(cfg, 3)
    n_features = int(feature_extractor(model).output_shape[-1])
    rng = np.random.default_rng(4)
    sites = []
    for i in range(2):
        splits = {}
        for split, n in (("train", 40), ("val", 12), ("test", 9)):
            y = rng.integers(0, 3, n)
            x = np.abs(rng.normal(size=(n, n_features)) + np.eye(3, n_features)[y] * 3)
            splits[split] = SiteData(x.astype(np.float32), y, np.arange(n).astype(object))
        sites.append(Site(f"s{i}", CLASSES, "b", splits, compare_alone=False))
    settings = MlpSettings(rounds=2, local_epochs=1, hidden=16)
    result = Coordinator(LocalTransport(sites), Expectation(CLASSES, "b"), head="mlp", mlp_settings=settings).run()
    (tmp_path / "run").mkdir()
    card = write_run(cfg, tmp_path / "run", result, model, "test", 1.0)
    assert card.build["head"] == "mlp" and card.extra["federated"]["optimiser"]["strategy"] == "FedAvg"
    x = sites[0].splits["test"].features
    assert result.mlp_params is not None
    np.testing.assert_allclose(head_of(model).predict(x, verbose=0), mlp.probabilities(result.mlp_params, x), atol=1e-4)


def test_a_site_whose_aggregate_would_be_one_image_is_refused(tmp_path):
    from liverscan.core.errors import DataError
    from liverscan.federated.run import check_aggregate_sizes

    def part(labels):
        y = np.asarray(labels)
        return SiteData(np.ones((len(y), 4), np.float32), y, np.arange(len(y)).astype(object))

    classes = ["normal", "tumor"]
    fine = {"train": part([0, 0, 1, 1]), "val": part([0, 1]), "test": part([])}
    check_aggregate_sizes("a", tmp_path, fine, classes)  # an empty split or class gives nothing away
    check_aggregate_sizes("a", tmp_path, {**fine, "train": part([1, 1, 1])}, classes)
    with pytest.raises(DataError, match="1 training image\\(s\\) of normal"):
        check_aggregate_sizes("a", tmp_path, {**fine, "train": part([0, 1, 1])}, classes)
    with pytest.raises(DataError, match="val split holds 1 image"):
        check_aggregate_sizes("a", tmp_path, {**fine, "val": part([1])}, classes)


def test_c_of_zero_is_a_usage_error(tmp_path):
    from cli_helpers import runner
    from liverscan.faces.cli import app

    for command in (["simulate", str(tmp_path), str(tmp_path)], ["server"]):
        r = runner.invoke(app, ["federate", *command, "--out", str(tmp_path / "run"), "--c", "0"])
        assert r.exit_code == 2 and "--c must be above 0" in r.output, r.output
    with pytest.raises(Exception, match="C must be above 0"):
        Coordinator(LocalTransport(_sites()), Expectation(CLASSES, "backbone"), c=0.0)
