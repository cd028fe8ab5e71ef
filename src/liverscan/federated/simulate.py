"""Every site in one process: the transport that ``liverscan federate simulate`` uses."""

from __future__ import annotations

import copy

from liverscan.federated.site import Site


class LocalTransport:
    """Sites as objects; each request and reply is copied, so nothing is shared by reference.

    ``sent``: every (site, request, reply) exchanged, for inspection."""

    def __init__(self, sites: list[Site], record: bool = False):
        self.sites = {s.name: s for s in sites}
        self.down: set[str] = set()
        self.record = record
        self.sent: list[tuple[str, dict, dict]] = []

    def available(self) -> list[str]:
        return [name for name in self.sites if name not in self.down]

    def ask(self, sites: list[str], request: dict) -> dict[str, dict | BaseException]:
        out: dict[str, dict | BaseException] = {}
        for name in sites:
            if name in self.down:
                out[name] = ConnectionError("site unreachable")
                continue
            try:
                reply = copy.deepcopy(self.sites[name].handle(copy.deepcopy(request)))
            except Exception as exc:  # noqa: BLE001 - a failing site is dropped from the round, not fatal
                out[name] = exc
                continue
            if self.record:
                self.sent.append((name, request, reply))
            out[name] = reply
        return out
