"""The transport over Flower: a ``ServerApp`` that runs the coordinator, a ``ClientApp`` that relays to a site.

``liverscan federate server`` starts a Flower SuperLink and submits this app; ``liverscan federate site``
computes its features once, listens on a local socket (authenticated with a secret only its own SuperNode
knows, through the node configuration) and starts a Flower SuperNode.  Flower starts a ClientApp process for
each message; it forwards the request to the site's process and the reply back, so the site's images and
features never leave the site's own process.  Needs ``pip install "liverscan[federated]"``.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

#: how often the coordinator looks for replies (Flower's own loop waits 3 s between looks)
POLL_SECONDS = 0.2


def encode(message: dict) -> RecordDict:
    """A message as Flower records: numeric arrays in an ArrayRecord, numbers and text in a ConfigRecord."""
    arrays: dict[str, Array] = {}
    config: dict = {}
    for key, value in message.items():
        v = np.asarray(value)
        if v.ndim > 0 and v.dtype.kind in "fiub":
            arrays[key] = Array(np.ascontiguousarray(v))
        elif v.ndim > 0:
            config[key] = [str(x) for x in v.tolist()]
        else:
            config[key] = v.item() if v.dtype.kind != "U" else str(v)
    return RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)})


def decode(content: RecordDict) -> dict:
    out: dict = {k: v.numpy() for k, v in content["arrays"].items()}
    for key, value in content["config"].items():
        out[key] = np.array(value) if isinstance(value, list) else value
    return out


class FlowerTransport:
    """:class:`~liverscan.federated.coordinator.Transport` over a Flower grid; a site is its node id."""

    def __init__(self, grid: Grid, timeout: float):
        self.grid = grid
        self.timeout = timeout
        self.failed: set[str] = set()

    def available(self) -> list[str]:
        return [str(n) for n in self.grid.get_node_ids() if str(n) not in self.failed]

    def ask(self, sites: list[str], request: dict) -> dict[str, dict | BaseException]:
        content = encode(request)
        messages = [Message(content, dst_node_id=int(s), message_type="query") for s in sites]
        pending = dict(zip(self.grid.push_messages(messages), sites))
        out: dict[str, dict | BaseException] = {}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                site = pending.pop(reply.metadata.reply_to_message_id, None)
                if site is None:
                    continue
                if reply.has_error():
                    out[site] = RuntimeError(reply.error.reason)
                    self.failed.add(site)
                else:
                    out[site] = decode(reply.content)
            if pending:
                time.sleep(POLL_SECONDS)
        for site in pending.values():
            out[site] = TimeoutError(f"no reply within {self.timeout:g} s")
            self.failed.add(site)
        return out


server_app = ServerApp()
client_app = ClientApp()


@client_app.query()
def relay(message: Message, context: Context) -> Message:
    """Forward the request to the site's own process and its reply back."""
    from multiprocessing.connection import Client

    from liverscan.federated.codec import from_bytes, to_bytes

    node = context.node_config
    with Client(str(node["socket"]), family="AF_UNIX", authkey=bytes.fromhex(str(node["secret"]))) as conn:
        conn.send_bytes(to_bytes(decode(message.content)))
        reply = conn.recv_bytes()
    if reply.startswith(b"ERROR:"):
        raise RuntimeError(reply[6:].decode(errors="replace"))
    return Message(encode(from_bytes(reply)), reply_to=message)


@server_app.main()
def coordinate(grid: Grid, context: Context) -> None:
    """Wait for the sites, run the coordinator and write the run directory (options in the run config)."""
    from liverscan.federated.deploy import serve

    serve(FlowerTransport(grid, float(context.run_config["round-timeout"])), dict(context.run_config), grid)
