"""The manager's commands for the edge: the certificate the balancer serves (installed at
start, reloaded by `ripctl reload --tls` and with each rolling restart) and the host registry
(`ripctl hosts APP list|add|remove`, kept in the state directory and sent to the balancer).

A part of the manager (core.Manager inherits it), moved here whole: its methods run in the
manager's loop and use the manager's state, which the class below names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ripsvc import edge, hosts, logs
from ripsvc.control import CommandError
from ripsvc.hosts import Registry
from ripsvc.manager.supervisor import ServePlan

log = logs.get("manager")


class HostsAndTLS:
    """The certificate and host registry commands of core.Manager."""

    # What they use of the manager (set by core.Manager.__init__).
    plan: ServePlan
    loop: asyncio.AbstractEventLoop
    runtime: Path
    state: Path
    hosts: Registry
    tls: bool

    async def control(self, command: str, body: dict[str, object],
                      timeout: float | None = None) -> dict[str, Any] | None:
        raise NotImplementedError  # core.Manager.control: a command to the balancer

    def prepare_edge(self) -> None:
        """The host registry and the certificate, before the balancer starts: a corrupt
        registry or a bad certificate stops the start with an error naming the file. The
        state directory is made only by what writes into it (hosts added, a certificate)."""
        self.hosts = hosts.Registry(self.plan.hosts, hosts.load(edge.hosts_file(self.state)))
        if self.tls:
            found = edge.install_certificate(self.plan.cert, self.plan.key, self.hosts.names(),
                                             self.state, self.runtime)
            log.info("HTTPS certificate: %s (%s)", found.cert, found.origin)

    async def reload_certificate(self) -> str | None:
        """Install the certificate files again and have the balancer load them: connections
        opened afterwards get the new certificate. Returns why it failed, or None."""
        try:
            found = edge.install_certificate(self.plan.cert, self.plan.key, self.hosts.names(),
                                             self.state, self.runtime)
        except edge.CertificateError as exc:
            return f"certificate not reloaded: {exc}"
        reply = await self.control("tls-reload", {})
        if reply is None or not reply.get("ok"):
            error = (reply or {}).get("error") or {"message": "the balancer does not answer"}
            return f"certificate not reloaded: {error['message']}"
        log.info("HTTPS certificate reloaded: %s (%s)", found.cert, found.origin)
        return None

    def command_tls_reload(self) -> asyncio.Task[str | None]:
        if not self.tls:
            raise CommandError("no-tls", "this app serves no HTTPS port", 409)
        return self.loop.create_task(self.reload_certificate())

    def command_hosts(self, action: str, host: str = "") -> asyncio.Task[None] | None:
        """list, add or remove a host of the registry; kept in the state file, then sent to
        the balancer."""
        if action == "list":
            return None
        try:
            name = hosts.normalize(host)
        except ValueError as exc:
            raise CommandError("bad-host", str(exc)) from None
        added = list(self.hosts.added)
        if action == "add":
            if name in self.hosts.names():
                return None
            added.append(name)
        elif name in self.hosts.configured:
            raise CommandError("configured-host", f"{name!r} is built in or configured in the "
                               "app's settings (hosts); change it there", 409)
        elif name not in added:
            raise CommandError("unknown-host", f"{name!r} is not in the registry", 404)
        else:
            added.remove(name)
        hosts.save(edge.hosts_file(self.state), added)
        self.hosts.set_added(added)
        return self.loop.create_task(self._send_hosts())

    async def _send_hosts(self) -> None:
        await self.control("hosts", {"added": list(self.hosts.added)})
        if self.tls and not self.plan.cert:  # a generated certificate covers the new names
            why = await self.reload_certificate()
            if why is not None:
                log.error("%s", why)
