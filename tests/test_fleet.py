"""The fleet: three rip hosts behind HAProxy, each in a network namespace of its own
(tests/support/fleet.py), with PROXY protocol v2, readiness checks and the agent-check.

A rolling deploy host by host under load (drain, wait until HAProxy sends nothing and the host
is idle, rolling restart, undrain, wait until HAProxy sends again) fails no request and needs
no retry of HAProxy's; the client's address reaches the app through HAProxy and rip. Then a
host dies (SIGKILL to its processes): HAProxy stops sending to it within its checks, and only
the requests it had in flight can fail (HAProxy retries GETs elsewhere: none is expected to).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.fleet import CLIENT_ADDRESS, HAProxy, Load, Network, RipHost

HOSTS = 3
#: HAProxy's check and agent interval, and how many failed checks mark a server down.
INTER = 0.2
FALL = 2
CLIENTS = 4


def test_rolling_deploy_and_a_dead_host_behind_haproxy(tmp_path: Path) -> None:
    network = Network(HOSTS)
    hosts: list[RipHost] = []
    haproxy = None
    loads: list[Load] = []
    try:
        hosts = [RipHost(network, n, tmp_path) for n in range(1, HOSTS + 1)]
        for host in hosts:
            host.wait_ready()
        haproxy = HAProxy(network, HOSTS, tmp_path, f"{int(INTER * 1000)}ms")
        for n in range(1, HOSTS + 1):
            haproxy.wait_status(f"h{n}", ("UP",), 10)
        # The agent's weight reached HAProxy: 100% of 100 for idle hosts.
        time.sleep(3 * INTER)
        assert {s["weight"] for s in haproxy.servers().values()} == {"100"}, haproxy.servers()

        load = Load(network, tmp_path, "deploy", CLIENTS, max_seconds=60, max_requests=200_000)
        loads.append(load)
        time.sleep(1)
        for host in hosts:
            server = f"h{host.n}"
            host.ripctl("drain")
            # HAProxy stops sending: readiness fails (DOWN) and the agent says drain.
            haproxy.wait_status(server, ("DOWN", "DRAIN", "NOLB", "MAINT"), 5)
            deadline = time.monotonic() + 10
            while not (haproxy.servers()[server]["scur"] == "0" and host.idle()):
                assert time.monotonic() < deadline, (haproxy.servers()[server], host.status())
                time.sleep(0.05)
            host.deploy("2")
            host.ripctl("reload", "--wait")
            host.ripctl("undrain")
            haproxy.wait_status(server, ("UP",), 10)
            assert haproxy.servers()[server]["status"] == "UP"
        time.sleep(1)  # every host serves v2 for a while
        result = load.finish()
        assert result["failed"] == 0, result
        bodies: dict[str, int] = result["bodies"]  # type: ignore[assignment]
        served = {body.rsplit(" ", 1)[0] for body in bodies}
        assert served == {f"h{n} v{v}" for n in range(1, HOSTS + 1) for v in (1, 2)}, bodies
        # The client's own address, through HAProxy (PROXY v2) and rip's balancer.
        assert {body.rsplit(" ", 1)[1] for body in bodies} == {CLIENT_ADDRESS}, bodies
        rows = haproxy.servers()
        assert all(row["wretr"] == "0" and row["wredis"] == "0" for row in rows.values()), rows
        assert int(result["ok"]) > 500, result  # type: ignore[call-overload]

        # A host dies under load.
        load = Load(network, tmp_path, "kill", CLIENTS, max_seconds=60, max_requests=200_000)
        loads.append(load)
        time.sleep(1)
        victim = hosts[-1]
        killed_at = time.monotonic() - load.started
        victim.kill()
        detected = haproxy.wait_status(f"h{victim.n}", ("DOWN",), 5)
        # Within its checks: FALL failed checks INTER apart, and one check's own time out.
        assert detected <= FALL * INTER + 1.0 + 0.5, detected
        time.sleep(1)
        result = load.finish()
        # At most the requests it had in flight (maxconn 4) failed, and none after HAProxy
        # knew; its retries on another host usually save even those.
        assert int(result["failed"]) <= 4, result  # type: ignore[call-overload]
        late = [t for t in result["error_times"]  # type: ignore[attr-defined]
                if t > killed_at + detected + 0.5]
        assert late == [], result
        bodies = result["bodies"]  # type: ignore[assignment]
        assert {body.split(" ")[0] for body in bodies} == {"h1", "h2", "h3"}, bodies
    finally:
        for load in loads:
            load.close()
        if haproxy is not None:
            haproxy.close()
        for host in hosts:
            host.close()
        network.close()
