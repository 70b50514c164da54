"""rip-server over HTTPS, end to end: each certificate source, the redirect, HSTS, reloading a
renewed certificate under an open keep-alive connection, start-up errors, port fallback, and
the host registry managed with ripctl and kept across restarts."""

from __future__ import annotations

import datetime
import errno
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from ripsvc.sockets import FALLBACK_FIRST, FALLBACK_LAST, Bind
from tests.support.client import fetch, read_all, request
from tests.support.haproxy import running_haproxy
from tests.support.server import Server, ripctl
from tests.support.waiting import free_port, wait_for

HELLO = str(Path(__file__).parent.parent / "examples" / "hello")


def write_certificate(directory: Path, name: str) -> tuple[Path, Path, int]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert, key, serial)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, serial


def https(port: int, cafile: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(cafile))
    return http.client.HTTPSConnection("localhost", port, context=context, timeout=10)


def served_serial(conn: http.client.HTTPSConnection) -> int:
    assert conn.sock is not None
    der = conn.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def serial_on_a_new_connection(port: int, cafile: Path) -> int:
    """The serial of the certificate a new connection gets (after a request served on it)."""
    conn = https(port, cafile)
    try:
        assert request(conn, "GET", "/ping").status == 200
        return served_serial(conn)
    finally:
        conn.close()


def renew(directory: Path, name: str, live_cert: Path, live_key: Path) -> tuple[Path, int]:
    """A new certificate written over the files the app is configured with: (cert, serial)."""
    cert, key, serial = write_certificate(directory, name)
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    return cert, serial


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20)


def test_self_signed_certificate_redirect_and_hsts(short_tmp):
    tls_port, redirect_port = free_port(), free_port()
    # Without mkcert on PATH the certificate is self-signed, made once and cached.
    server = Server(short_tmp, HELLO, "w:1", f"https:127.0.0.1:{tls_port}", "--redirect-port",
                    str(redirect_port), "--hsts", "--hsts-max-age", "600",
                    env={"PATH": "/nonexistent"})
    try:
        server.wait_healthy(1)
        assert "(self-signed)" in server.output()
        cert = server.state / "certs" / "self-signed.pem"
        served = curl("--cacert", str(cert), "-D", "-", f"https://localhost:{tls_port}/ping")
        assert served.returncode == 0, served.stderr
        assert served.stdout.startswith("HTTP/1.1 200")
        assert "strict-transport-security: max-age=600" in served.stdout.lower()
        by_ip = curl("--cacert", str(cert), f"https://127.0.0.1:{tls_port}/ping")
        assert by_ip.returncode == 0 and by_ip.stdout.startswith("pong"), by_ip.stderr
        conn = https(tls_port, cert)
        assert request(conn, "GET", "/ping").status == 200
        assert conn.sock is not None and conn.sock.selected_alpn_protocol() in ("http/1.1",
                                                                                None)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        conn.close()
        # The plain-HTTP port of the same app: no HSTS there.
        plain = fetch(server.port, "/ping")
        assert plain.status == 200 and "strict-transport-security" not in plain.headers
        moved = fetch(redirect_port, "/a/b?c=1", headers={"Host": f"localhost:{redirect_port}"})
        assert moved.status == 301
        assert moved.headers["location"] == f"https://localhost:{tls_port}/a/b?c=1"
        unknown = fetch(redirect_port, "/", headers={"Host": "elsewhere.example"})
        assert unknown.status == 404  # no redirect for hosts that are not ours
        first = cert.read_bytes()
    finally:
        server.close()
    again = Server(short_tmp, HELLO, "w:1", f"https:127.0.0.1:{tls_port}", "--redirect-port",
                   "0", env={"PATH": "/nonexistent"}, name=server.name)
    try:
        again.wait_healthy(1)
        assert cert.read_bytes() == first  # generated once, then cached
    finally:
        again.close()


def test_mkcert_is_used_when_installed(short_tmp):
    tls_port = free_port()
    caroot = short_tmp / "ca"  # never the machine's own CA or trust store
    server = Server(short_tmp, HELLO, "w:1", f"https:127.0.0.1:{tls_port}", "--redirect-port",
                    "0", env={"CAROOT": str(caroot)})
    try:
        server.wait_healthy(1)
        assert "(mkcert)" in server.output()
        served = curl("--cacert", str(caroot / "rootCA.pem"), f"https://localhost:{tls_port}/ping")
        assert served.returncode == 0 and served.stdout.startswith("pong"), served.stderr
    finally:
        server.close()


def test_a_renewed_certificate_is_reloaded_without_dropping_connections(short_tmp):
    tls_port = free_port()
    certs = short_tmp / "certs"
    certs.mkdir()
    cert, key, serial_a = write_certificate(certs, "a")
    live_cert, live_key = certs / "live.pem", certs / "live-key.pem"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    server = Server(short_tmp, HELLO, "w:1", f"https:127.0.0.1:{tls_port}", "--redirect-port",
                    "0", "--cert", str(live_cert), "--key", str(live_key))
    try:
        server.wait_healthy(1)
        assert "(configured)" in server.output()
        kept = https(tls_port, cert)
        assert request(kept, "GET", "/ping").status == 200
        assert served_serial(kept) == serial_a

        cert_b, serial_b = renew(certs, "b", live_cert, live_key)
        reloaded = ripctl("reload", server.name, "--tls")
        assert reloaded.returncode == 0, reloaded.stderr
        assert serial_on_a_new_connection(tls_port, cert_b) == serial_b
        # The keep-alive connection made before the reload goes on, on its own certificate.
        assert request(kept, "GET", "/ping").status == 200
        assert served_serial(kept) == serial_a
        kept.close()

        # A broken renewal is refused, names the file, and the last good one stays served.
        live_cert.write_text("not a certificate\n")
        broken = ripctl("reload", server.name, "--tls")
        assert broken.returncode != 0 and str(live_cert) in broken.stderr, broken.stderr
        assert serial_on_a_new_connection(tls_port, cert_b) == serial_b

        # A process reload (rolling restart) picks up renewed files as well.
        cert_c, serial_c = renew(certs, "c", live_cert, live_key)
        rolled = ripctl("reload", server.name, "--wait")
        assert rolled.returncode == 0, rolled.stderr
        assert serial_on_a_new_connection(tls_port, cert_c) == serial_c
    finally:
        server.close()


def test_an_unusable_certificate_stops_the_start_naming_the_file(short_tmp):
    certs = short_tmp / "certs"
    certs.mkdir()
    cert, _key, _ = write_certificate(certs, "a")
    _other_cert, other_key, _ = write_certificate(certs, "b")
    for cert_arg, key_arg, named in ((certs / "missing.pem", other_key, certs / "missing.pem"),
                                     (cert, other_key, other_key)):
        server = Server(short_tmp, HELLO, "w:1", f"https:127.0.0.1:{free_port()}",
                        "--redirect-port", "0", "--cert", str(cert_arg), "--key", str(key_arg))
        try:
            assert server.proc.wait(30) == 2
            assert str(named) in server.output(), server.output()
        finally:
            server.close()


def test_a_port_that_cannot_be_had_falls_back_from_5000():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = Bind(host="127.0.0.1", port=port, tls=True, fallback=True).open()
        try:
            assert FALLBACK_FIRST <= sock.getsockname()[1] <= FALLBACK_LAST
        finally:
            sock.close()
        strict = Bind(host="127.0.0.1", port=port, tls=True)  # an explicit port is exact
        with pytest.raises(OSError) as taken_error:
            strict.open().close()
        assert taken_error.value.errno == errno.EADDRINUSE


def test_ripctl_hosts_manages_a_registry_kept_across_restarts(short_tmp):
    server = Server(short_tmp, HELLO, "w:1", "--hosts", "configured.example")
    name = server.name
    try:
        server.wait_healthy(1)

        def status(host: str) -> int:
            return fetch(server.port, "/ping", headers={"Host": host}).status

        assert status("configured.example") == 200
        assert status("shop.example") == 404
        added = ripctl("hosts", name, "add", "Shop.Example")
        assert added.returncode == 0, added.stderr
        assert "shop.example\t(added)" in added.stdout
        assert status("shop.example") == 200
        listed = ripctl("hosts", name, "list").stdout.split("\n")
        assert {"localhost", "127.0.0.1", "::1", "configured.example"} <= set(listed)
        refused = ripctl("hosts", name, "remove", "configured.example")
        assert refused.returncode != 0 and "configured" in refused.stderr
        bad = ripctl("hosts", name, "add", "not a host")
        assert bad.returncode != 0 and "(bad-host)" in bad.stderr
        usage = ripctl("hosts", name, "add")
        assert usage.returncode == 2
    finally:
        server.close()
    registry = server.state / "hosts.json"
    assert "shop.example" in registry.read_text()
    again = Server(short_tmp, HELLO, "w:1", name=name)
    try:
        again.wait_healthy(1)
        assert fetch(again.port, "/ping", headers={"Host": "shop.example"}).status == 200
        removed = ripctl("hosts", name, "remove", "shop.example")
        assert removed.returncode == 0, removed.stderr
        assert fetch(again.port, "/ping", headers={"Host": "shop.example"}).status == 404
        missing = ripctl("hosts", name, "remove", "shop.example")
        assert missing.returncode != 0 and "(unknown-host)" in missing.stderr
    finally:
        again.close()
    registry.write_text('{"hosts": [42]}')
    corrupt = Server(short_tmp, HELLO, "w:1", name=name)
    try:
        assert corrupt.proc.wait(30) == 2
        assert f"{registry}: not a host registry" in corrupt.output()
        assert registry.read_text() == '{"hosts": [42]}'  # reported, never emptied
    finally:
        corrupt.close()


PROXY_TLS_HAPROXY = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend tls_passthrough
    bind 127.0.0.1:{front}
    default_backend rip
backend rip
    server rip 127.0.0.1:{rip} send-proxy-v2
"""


def test_proxy_protocol_in_front_of_tls(short_tmp):
    """The PROXY header comes before the TLS handshake (HAProxy passing TLS through)."""
    tls_port = free_port()
    server = Server(short_tmp, "tests/apps/probe.py", "w:1", f"https:127.0.0.1:{tls_port}",
                    "--redirect-port", "0", "--proxy-protocol", env={"PATH": "/nonexistent"})
    try:
        wait_healthy_behind_proxy(server, tls_port)
        cert = server.state / "certs" / "self-signed.pem"
        context = ssl.create_default_context(cafile=str(cert))
        # By hand: a v1 header, then TLS on the same connection.
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 40009 443\r\n")
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /client HTTP/1.1\r\nHost: localhost\r\nConnection: close"
                            b"\r\n\r\n")
                reply = read_all(tls)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        seen = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert seen == {"client": ["198.51.100.9", 40009], "scheme": "https"}
        # A real HAProxy passing TLS through, with send-proxy-v2; the client comes from
        # 127.0.0.2.
        front = free_port()
        with running_haproxy(PROXY_TLS_HAPROXY.format(front=front, rip=tls_port), short_tmp,
                             (front,)), \
                socket.create_connection(("127.0.0.1", front), timeout=10,
                                         source_address=("127.0.0.2", 0)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            reply = read_all(tls)
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.2"
        # No PROXY header before the ClientHello: closed, no handshake.
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw, \
                pytest.raises(OSError):  # ssl.SSLError, a reset or EOF: no handshake
            context.wrap_socket(raw, server_hostname="localhost").close()
    finally:
        server.close()


def wait_healthy_behind_proxy(server: Server, tls_port: int) -> None:
    """Every listener expects a PROXY header, the plain one Server adds as well."""
    def healthy() -> bool:
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
                sock.sendall(b"PROXY UNKNOWN\r\nGET /status HTTP/1.1\r\nHost: localhost\r\n"
                             b"Connection: close\r\n\r\n")
                reply = read_all(sock)
        except OSError:
            return False
        assert server.proc.poll() is None, server.output()
        return reply.startswith(b"HTTP/1.1 200")

    wait_for(healthy, 20, "rip-server healthy")


def test_metrics_count_reloads_and_worker_restarts(short_tmp):
    server = Server(short_tmp, HELLO, "w:1")
    try:
        server.wait_healthy(1)
        assert ripctl("reload", server.name, "--wait").returncode == 0
        workers = server.status()["workers"]
        os.kill(workers[0]["pid"], signal.SIGKILL)
        server.wait_output("restarting in")
        server.wait_healthy(1)
        text = ripctl_metrics(server.name)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("rip_reloads_total", ())] == 1
        assert samples[("rip_worker_restarts_total", ())] == 1
        assert samples[("rip_requests_total", (("code", "2xx"),))] >= 1
    finally:
        server.close()


def ripctl_metrics(name: str) -> str:
    from ripsvc import paths
    from tests.support.client import UnixHTTPConnection

    conn = UnixHTTPConnection(paths.manager_socket(name))
    try:
        reply = request(conn, "GET", "/metrics")
    finally:
        conn.close()
    assert reply.status == 200
    return reply.text
