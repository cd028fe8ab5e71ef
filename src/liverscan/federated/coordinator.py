"""The coordinator: rounds of requests to the sites, the exact aggregation, and the faults.

It talks to the sites through a :class:`Transport` (in-process for ``simulate``, Flower for a deployment), so
the protocol is one piece of code.  Every round is logged with its kind, the sites that answered and the
bytes sent each way.  A site that fails a round is dropped from it; training goes on while at least
``min_sites`` answer (the linear probe's optimiser restarts from the current parameters on the new set of
sites), and a site the transport offers again rejoins at the next phase or restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from liverscan.core import guard
from liverscan.core.errors import ConfigError, LiverscanError
from liverscan.federated import gaussian, linear, mlp, stats
from liverscan.federated.messages import SPLIT_NAMES, check_reply, nbytes

#: the C grid searched on the sites' validation splits (as the centralised probe's, without its extremes)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


class FederationError(LiverscanError):
    """Federated training cannot go on (a refused site, too few sites, a broken protocol)."""


class Transport(Protocol):
    def available(self) -> list[str]:
        """The sites connected now."""
        ...

    def ask(self, sites: list[str], request: dict) -> dict[str, dict | BaseException]:
        """Send ``request`` to each site; its reply, or the exception that stood for one."""
        ...


@dataclass
class MlpSettings:
    """The mlp head's federated training: ``rounds`` of ``local_epochs`` at each site, FedProx when ``mu > 0``;
    the round with the best pooled validation accuracy is kept (as ``train`` keeps its best epoch)."""

    rounds: int = 20
    local_epochs: int = 2
    mu: float = 0.0
    hidden: int = 128
    dropout: float = 0.5
    learning_rate: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def request(self) -> dict:
        return {
            "epochs": self.local_epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "dropout": self.dropout,
            "mu": self.mu,
        }


@dataclass
class Expectation:
    """What every site must share with the coordinator: classes and the backbone."""

    classes: list[str]
    fingerprint: str


@dataclass
class FederatedResult:
    """The fitted head (on raw features), the guard, and the record of how they were made."""

    classes: list[str]
    weights: np.ndarray
    bias: np.ndarray
    c: float
    reference: guard.Reference
    sites: dict[str, dict]
    rounds: list[dict]
    events: list[dict]
    pooled: dict
    pooled_alone: dict
    optimiser: dict
    seconds: float
    class_weights: dict[str, float] = field(default_factory=dict)
    head: str = "linear"
    mlp_params: dict[str, np.ndarray] | None = None  # the mlp head's weights (``weights``/``bias``: unused)


@dataclass
class _State:
    active: list[str]
    dims: dict[str, int]
    rounds: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


class _MembershipChanged(Exception):
    pass


@dataclass
class Progress:
    """How far the probe's fit has come, saved after every round so a stopped coordinator resumes from there:
    the fits finished (C -> validation log-loss, parameters) and the last parameters of the fit under way."""

    finished: dict[float, tuple[float, np.ndarray]] = field(default_factory=dict)
    current: float | None = None
    theta: np.ndarray | None = None

    def save(self, path: Path) -> None:
        from liverscan.core.fileio import atomic_path

        cs = sorted(self.finished)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                finished_c=np.array(cs, np.float64),
                finished_loss=np.array([self.finished[c][0] for c in cs], np.float64),
                finished_theta=np.array([self.finished[c][1] for c in cs], np.float64),
                current=np.float64(np.nan if self.current is None else self.current),
                theta=np.zeros(0) if self.theta is None else self.theta,
            )

    @classmethod
    def load(cls, path: Path) -> Progress:
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as z:
                finished = {
                    float(c): (float(loss), t)
                    for c, loss, t in zip(z["finished_c"], z["finished_loss"], z["finished_theta"])
                }
                current = float(z["current"])
                theta = z["theta"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise FederationError(f"{path}: cannot read the saved progress ({exc.__class__.__name__})") from None
        return cls(finished, None if np.isnan(current) else current, theta if len(theta) else None)


class Coordinator:
    """Runs the federated protocol over ``transport`` (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        expect: Expectation,
        *,
        min_sites: int = 2,
        c: float | None = None,
        retention: float = 0.95,
        max_rounds: int | None = None,
        log: Callable[[str], None] | None = None,
        progress: Progress | None = None,
        save_progress: Callable[[Progress], None] | None = None,
        head: str = "linear",
        mlp_settings: MlpSettings | None = None,
    ):
        self.transport = transport
        self.expect = expect
        self.min_sites = min_sites
        if c is not None and not c > 0:
            raise ConfigError(f"C must be above 0 (got {c})")
        self.c = c
        self.retention = retention
        self.max_rounds = max_rounds  # loss rounds per fit of the probe (None: until it converges)
        self.head = head
        self.mlp = mlp_settings or MlpSettings()
        self.progress = progress or Progress()
        self.save_progress = save_progress or (lambda progress: None)
        self.log = log or (lambda message: None)
        self.site_info: dict[str, dict] = {}  # by site name
        self.names: dict[str, str] = {}  # the transport's name of a site -> the site's own
        self.state = _State([], {})
        if expect.classes:
            self._set_classes(expect.classes)

    def _set_classes(self, classes: list[str]) -> None:
        self.expect.classes = list(classes)
        self.state.dims.update(K=len(classes), W=linear.n_columns(len(classes)))

    # ------------------------------------------------------------------ rounds
    def _round(self, kind: str, payload: dict | None = None, sites: list[str] | None = None) -> dict[str, dict]:
        st = self.state
        targets = list(st.active if sites is None else sites)
        request = {"kind": kind, **(payload or {})}
        t0 = time.perf_counter()
        answers = self.transport.ask(targets, request)
        replies: dict[str, dict] = {}
        for site in targets:
            answer = answers.get(site, FederationError("no reply"))
            name = self.names.get(site, site)
            if isinstance(answer, BaseException):
                if site in st.active:
                    st.active.remove(site)
                st.events.append({"round": len(st.rounds) + 1, "site": name, "event": "dropped", "why": str(answer)})
                self.log(f"site {name} dropped in round {len(st.rounds) + 1} ({kind}): {answer}")
                continue
            if kind == "hello" and not self.expect.classes:
                self._set_classes([str(c) for c in np.asarray(answer["classes"]).tolist()])
            check_reply(kind, answer, st.dims, name)
            replies[site] = answer
        st.rounds.append(
            {
                "round": len(st.rounds) + 1,
                "kind": kind,
                "sites": sorted(self.names.get(s, s) for s in replies),
                "bytes_to_sites": nbytes(request) * len(targets),
                "bytes_from_sites": sum(nbytes(r) for r in replies.values()),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        if len(st.rounds) % 10 == 0:
            sent = sum(r["bytes_to_sites"] + r["bytes_from_sites"] for r in st.rounds)
            self.log(f"round {len(st.rounds)} ({kind}): {len(replies)} sites answered; {sent / 1e6:.1f} MB so far")
        if sites is None and len(st.active) < self.min_sites:
            raise FederationError(
                f"only {len(st.active)} site(s) left ({', '.join(st.active) or 'none'}), fewer than the minimum "
                f"{self.min_sites}; training stopped"
            )
        return replies

    def _admit(self) -> None:
        """Greet the sites the transport offers and are not active: refuse a mismatch, let the others (re)join."""
        st = self.state
        new = [s for s in self.transport.available() if s not in st.active]
        if not new:
            return
        for site, reply in self._round("hello", sites=new).items():
            name = str(reply["name"])
            taken = {self.names[s] for s in st.active if s in self.names}
            if name in taken:
                raise FederationError(f"two sites are named {name}; give each site its own --name")
            self.names[site] = name
            classes = [str(c) for c in np.asarray(reply["classes"]).tolist()]
            if classes != self.expect.classes:
                raise FederationError(
                    f"site {name}: classes {classes} differ from the federation's {self.expect.classes}; "
                    "prepare every site with the same class map"
                )
            if str(reply["fingerprint"]) != self.expect.fingerprint:
                raise FederationError(
                    f"site {name}: backbone {reply['fingerprint']} differs from the coordinator's "
                    f"{self.expect.fingerprint}; every site needs the same backbone weights and model settings"
                )
            st.dims.setdefault("F", int(reply["n_features"]))
            if int(reply["n_features"]) != st.dims["F"]:
                raise FederationError(f"site {name}: {reply['n_features']} features, expected {st.dims['F']}")
            counts = np.asarray(reply["counts"])
            rejoined = name in self.site_info
            self.site_info[name] = {
                "images": {s: int(counts[i].sum()) for i, s in enumerate(SPLIT_NAMES)},
                "train_counts": dict(zip(self.expect.classes, counts[0].tolist())),
            }
            st.active.append(site)
            if rejoined:
                st.events.append({"round": len(st.rounds), "site": name, "event": "rejoined"})
                self.log(f"site {name} rejoined")

    # ------------------------------------------------------------------ the protocol
    def run(self) -> FederatedResult:
        t0 = time.perf_counter()
        st = self.state
        st.dims.update(S=len(SPLIT_NAMES), P=len(stats.PROBABILITY_EDGES) - 1, O=len(stats.OOD_EDGES) - 1)
        self._admit()
        if len(st.active) < self.min_sites:
            raise FederationError(f"{len(st.active)} site(s) connected, fewer than the minimum {self.min_sites}")
        self.log(f"{len(st.active)} sites: {', '.join(self.names[s] for s in st.active)}")
        moments = stats.combine(
            [stats.Moments(float(r["n"]), r["mean"], r["m2"]) for r in self._round("moments").values()]
        )
        mean, scale = moments.mean, moments.scale
        counts = sum(
            np.array(list(self.site_info[self.names[s]]["train_counts"].values()), np.float64) for s in st.active
        )
        class_weights = stats.balanced_weights(np.asarray(counts))
        if (class_weights == 0).any():
            missing = [c for c, w in zip(self.expect.classes, class_weights) if w == 0]
            raise FederationError(f"no site has training images of {', '.join(missing)}")
        mlp_params = None
        if self.head == "mlp":
            mlp_params, optimiser = self._fit_mlp(class_weights)
            c, weights, bias = float("nan"), np.zeros((0, 0)), np.zeros(0)
            head_payload = {"head": "mlp", **mlp_params, **self.mlp.request(), "seed": self.mlp.seed}
            head_payload["alone_epochs"] = self.mlp.rounds * self.mlp.local_epochs
        else:
            common = {"mean": mean, "scale": scale, "class_weights": class_weights}
            theta, c, optimiser = self._fit_probe(common)
            w, b = linear.unpack(theta, st.dims["F"], len(self.expect.classes))
            weights, bias = linear.folded(w, b, mean, scale)
            head_payload = {"head": "linear", "weights": weights, "bias": bias}
        reference = self._fit_guard()
        pooled, pooled_alone = self._evaluate(head_payload, reference)
        return FederatedResult(
            classes=self.expect.classes,
            weights=weights,
            bias=bias,
            c=c,
            reference=reference,
            sites=self.site_info,
            rounds=st.rounds,
            events=st.events,
            pooled=pooled,
            pooled_alone=pooled_alone,
            optimiser=optimiser,
            seconds=time.perf_counter() - t0,
            class_weights={name: round(float(w), 6) for name, w in zip(self.expect.classes, class_weights)},
            head=self.head,
            mlp_params=mlp_params,
        )

    def _minimise(self, common: dict, c: float, theta: np.ndarray) -> tuple[np.ndarray, dict]:
        """L-BFGS on the summed loss, one round per evaluation; restarted when the set of sites changes."""
        from scipy.optimize import minimize

        n_features, n_classes = self.state.dims["F"], len(self.expect.classes)
        restarts = 0
        evaluations = 0
        while True:
            sites = list(self.state.active)

            def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
                nonlocal evaluations
                evaluations += 1
                w, b = linear.unpack(t, n_features, n_classes)
                replies = self._round("loss", {**common, "weights": w, "bias": b})
                if sorted(replies) != sorted(sites):
                    best[0] = t
                    raise _MembershipChanged
                self.progress.current, self.progress.theta = c, np.array(t)
                self.save_progress(self.progress)
                return linear.objective(list(replies.values()), w, c)

            best = [theta]
            try:
                options = {"maxiter": 2000, "maxfun": self.max_rounds or 15000, "gtol": 1e-7, "ftol": 1e-12}
                res = minimize(fun, theta, jac=True, method="L-BFGS-B", options=options)
                return res.x, {
                    "iterations": int(res.nit),
                    "evaluations": evaluations,
                    "restarts": restarts,
                    "converged": bool(res.success),
                }
            except _MembershipChanged:
                theta = best[0]
                restarts += 1
                self._admit()

    def _fit_at(self, common: dict, c: float, theta: np.ndarray) -> tuple[np.ndarray, dict]:
        """The probe at ``c``: from the saved progress when it stopped at this C, else warm-started from ``theta``."""
        p = self.progress
        if c in p.finished and self.c is not None:
            return p.finished[c][1], {"resumed": True}
        start = p.theta if p.current == c and p.theta is not None and p.theta.shape == theta.shape else theta
        if start is not theta:
            self.log(f"resuming the fit at C = {c:g} from the saved parameters")
        fitted, optimiser = self._minimise(common, c, start)
        if self.c is not None:
            p.finished[c] = (float("nan"), fitted)
            self.save_progress(p)
        return fitted, optimiser

    def _fit_probe(self, common: dict) -> tuple[np.ndarray, float, dict]:
        n_params = (self.state.dims["F"] + 1) * linear.n_columns(len(self.expect.classes))
        theta = np.zeros(n_params)
        has_val = all(self.site_info[self.names[s]]["images"]["val"] > 0 for s in self.state.active)
        if self.c is not None or not has_val:
            c = self.c if self.c is not None else 0.03
            theta, optimiser = self._fit_at(common, c, theta)
            return (
                theta,
                c,
                {
                    **optimiser,
                    "C": c,
                    "C_chosen_by": "given" if self.c is not None else "default (a site has no validation split)",
                },
            )
        best: tuple[float, float, np.ndarray, dict] | None = None
        scores = {}
        for c in C_GRID:  # strong to weak regularisation, each warm-started from the last
            if c in self.progress.finished:  # fitted before a stop
                loss, theta = self.progress.finished[c]
                optimiser = {"resumed": True}
            else:
                theta, optimiser = self._fit_at(common, c, theta)
                w, b = linear.unpack(theta, self.state.dims["F"], len(self.expect.classes))
                replies = self._round(
                    "val_loss", {"mean": common["mean"], "scale": common["scale"], "weights": w, "bias": b}
                )
                loss = sum(float(r["loss"]) for r in replies.values()) / max(
                    sum(float(r["n"]) for r in replies.values()), 1.0
                )
                self.progress.finished[c] = (loss, theta)
                self.save_progress(self.progress)
            scores[c] = round(loss, 5)
            self.log(f"C = {c:g}: validation log-loss {loss:.4f}")
            if best is None or loss < best[0]:
                best = (loss, c, theta.copy(), optimiser)
        assert best is not None
        return (
            best[2],
            best[1],
            {**best[3], "C": best[1], "C_chosen_by": "pooled validation log-loss", "validation_log_loss": scores},
        )

    def _reference_payload(self, reference: guard.Reference) -> dict:
        return {
            "guard_means": reference.means,
            "guard_basis": reference.basis,
            "guard_eig": reference.eig,
            "guard_floor": reference.floor,
        }

    def _fit_guard(self) -> guard.Reference:
        self._admit()
        reference = gaussian.fit_from_moments(list(self._round("guard_moments").values()))
        replies = self._round("guard_histogram", self._reference_payload(reference))
        counts = np.sum([np.asarray(r["counts"]) for r in replies.values()], axis=0)
        sources = sorted({str(r["source"]) for r in replies.values()})
        n = int(np.sum(counts))
        held = f"{' and '.join(sources)} split{'s' if len(sources) > 1 else ''} of {len(replies)} sites, binned (n={n})"
        return guard.calibrate(reference, stats.pseudo_scores(counts, stats.OOD_EDGES), self.retention, held)

    def _fit_mlp(self, class_weights: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        """FedAvg (FedProx with mu > 0) of the mlp head; the round with the best pooled validation accuracy."""
        s = self.mlp
        self.state.dims["H"] = s.hidden
        params = mlp.init(self.state.dims["F"], s.hidden, len(self.expect.classes), s.seed)
        best: tuple[float, float, int, dict[str, np.ndarray]] | None = None
        history = []
        for r in range(1, s.rounds + 1):
            self._admit()
            payload = {**params, "class_weights": class_weights, **s.request(), "seed": s.seed + r}
            replies = self._round("mlp_train", payload)
            params = mlp.average([({k: np.asarray(x[k]) for k in mlp.NAMES}, float(x["n"])) for x in replies.values()])
            val = list(self._round("mlp_val", params).values())
            n = sum(float(v["n"]) for v in val)
            accuracy = sum(float(v["correct"]) for v in val) / n if n else float("nan")
            loss = sum(float(v["loss"]) for v in val) / n if n else float("nan")
            history.append({"round": r, "val_accuracy": round(accuracy, 4), "val_loss": round(loss, 4)})
            self.log(f"mlp round {r}: pooled validation accuracy {accuracy:.4f}, loss {loss:.4f}")
            if best is None or not n or (accuracy, -loss) > (best[0], -best[1]):
                best = (accuracy, loss, r, {k: v.copy() for k, v in params.items()})
        assert best is not None
        strategy = f"FedProx (mu = {s.mu:g})" if s.mu > 0 else "FedAvg"
        return best[3], {
            "strategy": strategy,
            "rounds": s.rounds,
            "local_epochs": s.local_epochs,
            "best_round": best[2],
            "best_val_accuracy": round(best[0], 4),
            "history": history,
        }

    def _evaluate(self, head_payload: dict, reference: guard.Reference) -> tuple[dict, dict]:
        self._admit()
        payload = {**head_payload, "threshold": reference.threshold, **self._reference_payload(reference)}
        replies = self._round("evaluate", payload)
        totals: dict[str, np.ndarray] = {}
        for tid, r in replies.items():
            site = self.names[tid]
            local = stats.metrics_from_counts(r["confusion"], r["positive"], r["negative"])
            alone = stats.metrics_from_counts(r["alone_confusion"], r["alone_positive"], r["alone_negative"])
            self.site_info[site]["test_metrics"] = {
                "federated": {**local, "flagged_out_of_distribution": int(r["flagged"])},
                "this_site_alone": {
                    **alone,
                    "C": None if not np.isfinite(float(r["alone_c"])) else float(r["alone_c"]),
                },
            }
            for k in ("confusion", "positive", "negative", "alone_confusion", "alone_positive", "alone_negative"):
                totals[k] = totals.get(k, 0) + np.asarray(r[k])
        pooled = stats.metrics_from_counts(totals["confusion"], totals["positive"], totals["negative"])
        alone = stats.metrics_from_counts(totals["alone_confusion"], totals["alone_positive"], totals["alone_negative"])
        return pooled, alone
