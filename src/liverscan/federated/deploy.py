"""A real deployment over Flower: ``liverscan federate server`` (the coordinator) and ``federate site``.

The coordinator starts a Flower SuperLink (bound to loopback unless told otherwise) and submits the
liverscan Flower app to it (``flwr run``); the app's ServerApp waits for the sites, runs the
:class:`~liverscan.federated.coordinator.Coordinator` and writes the run directory.  A site computes its
features once, serves them to its own ClientApp over a local socket and starts a Flower SuperNode that
connects to the coordinator.  TLS (``--tls-dir``) and SuperNode authentication are Flower's own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from liverscan.core import artifacts as art
from liverscan.core.config import Config, load_saved_config
from liverscan.core.errors import ConfigError, LiverscanError
from liverscan.core.runinfo import utc_now

EXTRA = 'pip install "liverscan[federated]"'
LOOPBACK = ("127.0.0.1", "localhost", "::1")
RETRY_SECONDS = 10  # a site's wait before it connects again to a coordinator that went away
APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "liverscan-federated"
version = "1.0.0"
description = "liverscan federated training (the app liverscan federate server submits)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "liverscan"

[tool.flwr.app.components]
serverapp = "liverscan.federated.flower:server_app"
clientapp = "liverscan.federated.flower:client_app"

[tool.flwr.app.config]
out = ""
min-sites = 2
c = 0.0
round-timeout = 120.0
wait = 600.0
sites = 2
max-rounds = 0
rounds = 0
local-epochs = 0
prox-mu = 0.0
"""


def flower_tool(name: str) -> str:
    """The path of one of Flower's commands (beside this Python), or a one-line error naming the extra."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise ConfigError(f"federated deployment needs Flower: {EXTRA}")
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found beside {sys.executable} or on PATH; {EXTRA}")
    return found


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "FLWR_HOME": str(home)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _free_port() -> int:
    """A loopback port nothing listens on now (for the SuperNode's local API)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_files(tls_dir: Path | None) -> dict[str, Path]:
    if tls_dir is None:
        return {}
    files = {"ca": tls_dir / "ca.crt", "cert": tls_dir / "server.pem", "key": tls_dir / "server.key"}
    for path in files.values():
        if not path.is_file():
            raise ConfigError(f"{path}: missing (--tls-dir needs ca.crt, server.pem and server.key)")
    return files


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (Linux ``/proc``; elsewhere none): Flower starts some in their own groups."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process, its group and all it started: SIGTERM, then SIGKILL for what is left after ``grace`` s."""
    below = _descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + grace
    while below and time.monotonic() < deadline:
        below = [p for p in below if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.2)
    for pid in below:  # still running: a Flower process that did not follow its parent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _parent_death_signal():
    """A callable for ``preexec_fn`` that asks Linux for SIGTERM when the liverscan process that started the child
    dies (even by SIGKILL), so no Flower process outlives its coordinator or site; None elsewhere.

    libc's ``prctl`` is looked up here, in the parent: the child between fork and exec only calls it (loading a
    library there is unsafe while threads run).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    term = int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(1, term)  # PR_SET_PDEATHSIG

    return die_with_parent


@contextlib.contextmanager
def _running(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A Flower process in its own process group (stopped with all it started), which dies with this one."""
    preexec = _parent_death_signal()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec
        )
    try:
        yield proc
    finally:
        _stop(proc)


def _wait_listening(host: str, port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise LiverscanError(f"the Flower SuperLink stopped at start ({' '.join(tail) or 'no output'})")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.3)
    raise LiverscanError(f"the Flower SuperLink did not listen on {host}:{port} within {seconds:g} s")


# ----------------------------------------------------------------------------- the coordinator


def start_server(
    cfg: Config,
    out: Path,
    *,
    address: str = "127.0.0.1:8000",
    min_sites: int = 2,
    sites: int | None = None,
    c: float | None = None,
    max_rounds: int | None = None,
    rounds: int | None = None,
    local_epochs: int | None = None,
    prox_mu: float | None = None,
    round_timeout: float = 120.0,
    wait: float = 600.0,
    tls_dir: Path | None = None,
    insecure: bool = False,
    site_keys: Sequence[Path] = (),
    overwrite: bool = False,
    resume: bool = False,
    print_: Callable[[str], None] = print,
) -> art.ModelCard:
    """Start the SuperLink, submit the app, wait for the run to end; the run directory's card.  ``resume``: go
    on with the stopped run in ``out`` (its configuration, and the probe's fit from where it stopped)."""
    from liverscan.federated.run import check_config
    from liverscan.training.train import _start_run_dir

    check_config(cfg)
    superlink, flwr = flower_tool("flower-superlink"), flower_tool("flwr")
    host, port = _split_address(address)
    tls = _tls_files(tls_dir)
    for key in site_keys:
        if not Path(key).is_file():
            raise ConfigError(f"{key}: site public key not found")
    if site_keys and not tls:
        raise ConfigError("site authentication (--site-key) needs TLS: give --tls-dir")
    if not tls and host not in LOOPBACK and not insecure:
        raise ConfigError(
            f"--address {address} is not loopback: give --tls-dir (certificates) or, on a trusted network, --insecure"
        )
    out = Path(out).resolve()
    if resume:
        info = art.read_run_info(out)
        if not info.get("federated") or info.get("engine") != "flower":
            raise LiverscanError(f"{out}: not a federated deployment's run; nothing to resume")
        if art.TRAIN_PHASE in info.get("done", []):
            raise LiverscanError(f"{out}: federated training already finished")
    else:
        _start_run_dir(out, overwrite)
        cfg.save(out / art.CONFIG_FILE)
        phases = [art.TRAIN_PHASE] + ([art.EXPORT_PHASE] if cfg.train.export_runtime != "none" else [])
        info = {"created": utc_now(), "federated": True, "engine": "flower", "phases": phases, "done": []}
    art.write_run_info(out, {**info, "status": "running", "error": None})
    with tempfile.TemporaryDirectory(prefix="liverscan-flower-") as tmp:
        home, app = Path(tmp) / "home", Path(tmp) / "app"
        home.mkdir()
        app.mkdir()
        (app / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
        connection = [f'address = "{host}:{port}"']
        connection += [f'root-certificates = "{tls["ca"]}"'] if tls else ["insecure = true"]
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "coordinator"\n\n[superlink.coordinator]\n' + "\n".join(connection) + "\n",
            encoding="utf-8",
        )
        cmd = [superlink, "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
        cmd += (
            ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"])]
            if tls
            else ["--insecure"]
        )
        cmd += ["--enable-supernode-auth"] if site_keys else []
        env = _env(home)
        expected = max(min_sites, sites or 0)
        overrides = (
            f"out='{out}' min-sites={min_sites} sites={expected} c={c or 0.0} max-rounds={max_rounds or 0} "
            f"round-timeout={float(round_timeout)} wait={float(wait)} rounds={rounds or 0} "
            f"local-epochs={local_epochs or 0} prox-mu={float(prox_mu or 0.0)}"
        )
        try:
            with _running(cmd, env, Path(tmp) / "superlink.log") as link:
                _wait_listening(host, port, link, Path(tmp) / "superlink.log")
                for key in site_keys:  # Flower's SuperNode authentication: only these sites may connect
                    done = subprocess.run(
                        [flwr, "supernode", "register", str(Path(key).resolve()), "coordinator"],
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode != 0:
                        raise LiverscanError(f"{key}: Flower refused the site key ({done.stdout.strip()[-200:]})")
                print_(f"Flower SuperLink on {host}:{port}{' (TLS)' if tls else ''}; waiting for {expected} sites")
                run = subprocess.Popen(
                    [flwr, "run", str(app), "--stream", "--run-config", overrides],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                    preexec_fn=_parent_death_signal(),
                )
                try:
                    assert run.stdout is not None
                    for line in run.stdout:
                        if "liverscan:" in line:
                            print_(line.split("liverscan:", 1)[1].strip())
                    run.wait()
                finally:
                    _stop(run)
        except BaseException as exc:
            now = art.read_run_info(out)
            if now.get("status") == "running":
                interrupted = isinstance(exc, KeyboardInterrupt)
                now.update(status="interrupted" if interrupted else "failed", error=None if interrupted else str(exc))
                art.write_run_info(out, now)
            raise
    now = art.read_run_info(out)
    if art.TRAIN_PHASE not in now.get("done", []):
        raise LiverscanError(f"{out}: federated training did not finish ({now.get('error') or now.get('status')})")
    return art.read_card(out)


def serve(transport, run_config: dict, grid) -> None:
    """The ServerApp's body: wait for ``min-sites`` sites, run the coordinator, write the run directory."""
    from liverscan.federated.coordinator import Coordinator, Expectation, Progress
    from liverscan.federated.run import backbone, fingerprint, mlp_settings, write_run

    out = Path(str(run_config["out"]))
    info = art.read_run_info(out)

    def say(message: str) -> None:
        print(f"liverscan: {message}", flush=True)

    try:
        cfg = load_saved_config(out / art.CONFIG_FILE)
        min_sites, expected = int(run_config["min-sites"]), int(run_config["sites"])
        deadline = time.monotonic() + float(run_config["wait"])
        while len(transport.available()) < expected:
            if time.monotonic() > deadline:
                if len(transport.available()) >= min_sites:
                    break
                raise LiverscanError(f"fewer than {min_sites} sites connected within {run_config['wait']} s")
            time.sleep(1)
        t0 = time.perf_counter()
        c = float(run_config["c"]) or None
        expect = Expectation([], fingerprint(cfg))
        max_rounds = int(run_config["max-rounds"]) or None
        saved = out / art.FEDERATION_PROGRESS_FILE
        progress = Progress.load(saved) if saved.is_file() else None
        if progress is not None:
            say(f"resuming: {len(progress.finished)} fit(s) of the probe done before the stop")
        result = Coordinator(
            transport,
            expect,
            min_sites=min_sites,
            c=c,
            retention=cfg.ood.retention,
            max_rounds=max_rounds,
            log=say,
            progress=progress,
            save_progress=lambda p: p.save(saved),
            head=cfg.model.head,
            mlp_settings=mlp_settings(
                cfg, int(run_config["rounds"]), int(run_config["local-epochs"]), float(run_config["prox-mu"])
            ),
        ).run()
        model = backbone(cfg, len(result.classes))
        card = write_run(
            cfg, out, result, model, "Flower deployment (SuperLink and SuperNodes)", time.perf_counter() - t0
        )
        saved.unlink(missing_ok=True)
        say(f"federated over {len(card.extra['federated']['sites'])} sites in {len(result.rounds)} rounds; wrote {out}")
    except BaseException as exc:
        stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
        info.update(status="interrupted" if stopped else "failed", error=None if stopped else str(exc))
        art.write_run_info(out, info)
        say(f"error: {exc}" if not stopped else "stopped")
        raise
    info.update(
        done=[art.TRAIN_PHASE],
        status="trained" if art.pending_phases({**info, "done": [art.TRAIN_PHASE]}) else "complete",
    )
    art.write_run_info(out, info)


# ----------------------------------------------------------------------------- a site


def start_site(
    cfg: Config,
    data: Path,
    server: str,
    *,
    name: str | None = None,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    print_: Callable[[str], None] = print,
) -> None:
    """Compute this site's features, serve them to its ClientApp, run a SuperNode until it stops."""
    from multiprocessing.connection import Listener

    from liverscan.core.dataset import PreparedData
    from liverscan.federated.codec import from_bytes, to_bytes
    from liverscan.federated.run import backbone, check_config, load_site

    check_config(cfg)
    supernode = flower_tool("flower-supernode")
    host, port = _split_address(server)
    if root_certificates is None and host not in LOOPBACK:
        print_(f"warning: no --root-certificates: the connection to {server} is not encrypted")
    prepared = PreparedData(data)
    model = backbone(cfg, len(prepared.classes))
    site = load_site(name or Path(data).resolve().name, prepared, cfg, model, print_)
    secret = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="liverscan-site-") as tmp:
        path = str(Path(tmp) / "site.sock")
        listener = Listener(path, family="AF_UNIX", authkey=secret)

        def answer() -> None:
            while True:
                try:
                    conn = listener.accept()
                except (OSError, EOFError):
                    return
                with conn:
                    try:
                        reply = b"" + to_bytes(site.handle(from_bytes(conn.recv_bytes())))
                    except Exception as exc:  # noqa: BLE001 - the coordinator records the failed round
                        reply = f"ERROR:{exc}".encode()
                    with contextlib.suppress(OSError):
                        conn.send_bytes(reply)

        threading.Thread(target=answer, daemon=True).start()
        node_config = f"socket='{path}' secret='{secret.hex()}'"
        cmd = [supernode, "--superlink", f"{host}:{port}", "--node-config", node_config, "--port", str(_free_port())]
        cmd += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        home = Path(tmp) / "home"
        home.mkdir()
        print_(f"site {site.name}: connecting to {server}; Ctrl+C to leave the federation")
        try:
            while True:  # the SuperNode gives up on an unreachable coordinator: start it again (a resumed one)
                with _running(cmd, _env(home), Path(tmp) / "supernode.log") as node:
                    node.wait()
                print_(
                    f"site {site.name}: the coordinator at {server} is unreachable; trying again in {RETRY_SECONDS} s"
                )
                time.sleep(RETRY_SECONDS)
        finally:
            listener.close()
