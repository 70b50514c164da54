"""The balancer's certificate (configured, mkcert, self-signed) and TLS context, through real
handshakes on loopback: Python's ssl client and curl against a small HTTPS server on asyncio
and on uvloop. Needs the Debian packages mkcert and curl (python3-cryptography for the Debian
venv); mkcert's CA is made in a temporary CAROOT, never installed in a trust store."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ripsvc import tls

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
TIMEOUT = 10.0
T = TypeVar("T")


# -- certificates made by the tests ------------------------------------------------------------
def make_key(kind: str) -> Any:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_cert(key: Any, cn: str, names: Sequence[str] = ("localhost", "127.0.0.1"), *,
              issuer: tuple[Any, x509.Certificate] | None = None, ca: bool = False,
              days: float = 90) -> x509.Certificate:
    """A certificate for `names`, self-signed unless `issuer` (key, certificate) is given."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer[1].subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=30))
               .not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8, encryption))


def write_pair(directory: Path, name: str, kind: str = "ec",
               names: Sequence[str] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
    """A self-signed certificate and its key in directory/name.pem, directory/name.key."""
    key = make_key(kind)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(pem(make_cert(key, name, names)))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))}


def not_after(cert: x509.Certificate) -> datetime:
    return getattr(cert, "not_valid_after_utc", None) or \
        cert.not_valid_after.replace(tzinfo=UTC)


# -- a small HTTPS server on its own loop ------------------------------------------------------
class Server:
    """An HTTPS server in a thread with an asyncio or uvloop loop: 200 "ok" to every request,
    connections kept alive."""

    def __init__(self, context: ssl.SSLContext, loop: str) -> None:
        self.context = context
        self.loop = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the test server did not start"
        assert self.port, "the test server failed to listen"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the test server did not stop"

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the server's loop thread, as the balancer would run it."""
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            server = self.loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
            self.port = server.sockets[0].getsockname()[1]
        finally:
            self._ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    @staticmethod
    async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- clients -----------------------------------------------------------------------------------
def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def connect(port: int, cafile: Path, host: str = "localhost") -> ssl.SSLSocket:
    """A verified TLS connection to 127.0.0.1:port, checking the certificate for `host`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return client_context(cafile).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def exchange(conn: ssl.SSLSocket) -> bytes:
    """One request on the connection; the whole response."""
    conn.sendall(REQUEST)
    data = b""
    while len(data) < len(RESPONSE):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serial(conn: ssl.SSLSocket) -> int:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def served_serial(port: int, cafile: Path, host: str = "localhost") -> int:
    with connect(port, cafile, host) as conn:
        assert exchange(conn) == RESPONSE
        return serial(conn)


def curl(port: int, cafile: Path, host: str) -> subprocess.CompletedProcess[str]:
    args = ["curl", "--silent", "--show-error", "--max-time", str(TIMEOUT), "--noproxy", "*",
            "--cacert", str(cafile), "--write-out", "\n%{http_version}",
            "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT + 5,
                          check=False)


def assert_serves(cert: tls.Certificate, cafile: Path, loop: str,
                  hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> None:
    """Python's ssl client and curl both verify the certificate for each host, and get
    HTTP/1.1 by ALPN (both offer h2 as well)."""
    expected = load(cert.cert).serial_number
    with Server(tls.server_context(cert.cert, cert.key), loop) as server:
        for host in hosts:
            with connect(server.port, cafile, host) as conn:
                assert conn.selected_alpn_protocol() == "http/1.1"
                assert exchange(conn) == RESPONSE
                assert serial(conn) == expected
            done = curl(server.port, cafile, host)
            assert done.returncode == 0, f"curl https://{host}/: {done.stderr}"
            assert done.stdout == "ok\n\n1.1"


# -- mkcert ------------------------------------------------------------------------------------
@pytest.fixture
def caroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """mkcert's CA in a temporary directory: the machine's own CA and trust store untouched."""
    path = tmp_path / "caroot"
    monkeypatch.setenv("CAROOT", str(path))
    return path


class LoggedMkcert:
    """The real mkcert behind a script that logs each command line."""

    def __init__(self, directory: Path) -> None:
        real = shutil.which("mkcert")
        assert real, "the tests need mkcert: apt-get install mkcert"
        directory.mkdir(exist_ok=True)
        self.path = directory / "mkcert"
        self.log = directory / "mkcert.log"
        self.path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.log}\nexec {real} "$@"\n')
        self.path.chmod(0o755)

    def generations(self) -> list[str]:
        """The command lines that made a certificate (not the `-CAROOT` queries)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if line != "-CAROOT"]


@pytest.fixture
def mkcert(tmp_path: Path, caroot: Path) -> LoggedMkcert:
    return LoggedMkcert(tmp_path / "bin")


# -- each source, served -----------------------------------------------------------------------
def test_configured_certificate_with_chain_is_served(tmp_path: Path, loop: str) -> None:
    ca_key = make_key("ec")
    ca = make_cert(ca_key, "test CA", ca=True)
    key = make_key("rsa")
    leaf = make_cert(key, "leaf", ["localhost", "127.0.0.1"], issuer=(ca_key, ca))
    (tmp_path / "chain.pem").write_bytes(pem(leaf) + pem(ca))
    (tmp_path / "leaf.key").write_bytes(key_pem(key))
    (tmp_path / "ca.pem").write_bytes(pem(ca))

    found = tls.resolve(str(tmp_path / "chain.pem"), str(tmp_path / "leaf.key"), ["example.com"],
                        tmp_path / "cache", mkcert=None)

    assert found == tls.Certificate(tmp_path / "chain.pem", tmp_path / "leaf.key", "configured")
    assert not (tmp_path / "cache").exists()  # nothing generated
    assert_serves(found, tmp_path / "ca.pem", loop)


def test_mkcert_certificate_is_served(tmp_path: Path, caroot: Path, mkcert: LoggedMkcert,
                                      loop: str) -> None:
    cache = tmp_path / "state" / "certs"
    found = tls.resolve("", "", ["App.Example", "*.bücher.example", "*", "[::1]"], cache,
                        mkcert=str(mkcert.path))

    assert found == tls.Certificate(cache / "mkcert.pem", cache / "mkcert-key.pem", "mkcert")
    [command] = mkcert.generations()
    assert "-install" not in command.split()
    assert command.endswith("-- app.example *.xn--bcher-kva.example ::1 localhost 127.0.0.1")
    assert sans(load(found.cert)) == {"app.example", "*.xn--bcher-kva.example", "localhost",
                                      "127.0.0.1", "::1"}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(found.key.stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == [".lock", "mkcert-key.pem", "mkcert.pem"]
    assert_serves(found, caroot / "rootCA.pem", loop,
                  ["localhost", "127.0.0.1", "app.example", "shop.xn--bcher-kva.example"])


def test_self_signed_certificate_is_served(tmp_path: Path, loop: str) -> None:
    cache = tmp_path / "certs"
    found = tls.resolve("", "", ["app.example", "*.example.org", "10.1.2.3"], cache, mkcert=None)

    assert found == tls.Certificate(cache / "self-signed.pem", cache / "self-signed-key.pem",
                                    "self-signed")
    cert = load(found.cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "rip-server self-signed"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lifetime = not_after(cert) - datetime.now(UTC)
    assert timedelta(days=364) < lifetime <= timedelta(days=365)
    assert sans(cert) == {"app.example", "*.example.org", "10.1.2.3", "localhost", "127.0.0.1",
                          "::1"}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(found.key.stat().st_mode) == 0o600
    assert_serves(found, found.cert, loop, ["localhost", "127.0.0.1", "www.example.org"])


def test_mkcert_is_looked_up_on_path_at_call_time(tmp_path: Path, mkcert: LoggedMkcert,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tls.resolve("", "", [], tmp_path / "a").origin == "self-signed"
    monkeypatch.setenv("PATH", str(mkcert.path.parent))
    assert tls.resolve("", "", [], tmp_path / "b").origin == "mkcert"
    assert len(mkcert.generations()) == 1


def test_failing_mkcert_is_an_error_with_its_stderr(tmp_path: Path) -> None:
    fake = tmp_path / "mkcert"
    fake.write_text('#!/bin/sh\n[ "$1" = -CAROOT ] && { echo /nonexistent; exit 0; }\n'
                    'echo "ERROR: failed to save the certificate: no space" >&2\nexit 1\n')
    fake.chmod(0o755)
    with pytest.raises(tls.CertificateError, match="failed to save the certificate: no space"):
        tls.resolve("", "", [], tmp_path / "cache", mkcert=str(fake))
    assert not (tmp_path / "cache" / "mkcert.pem").exists()


# -- the cache ---------------------------------------------------------------------------------
def test_self_signed_cache_is_reused_and_remade_for_a_new_host(tmp_path: Path) -> None:
    cache = tmp_path / "certs"
    first = tls.resolve("", "", ["a.example"], cache, mkcert=None)
    stamp, number = first.cert.stat().st_mtime_ns, load(first.cert).serial_number

    again = tls.resolve("", "", ["A.example."], cache, mkcert=None)
    assert again == first
    assert (again.cert.stat().st_mtime_ns, load(again.cert).serial_number) == (stamp, number)

    wider = tls.resolve("", "", ["a.example", "b.example"], cache, mkcert=None)
    assert load(wider.cert).serial_number != number
    assert {"a.example", "b.example"} <= sans(load(wider.cert))
    # the wider certificate covers the first list too
    narrower = tls.resolve("", "", ["a.example"], cache, mkcert=None)
    assert load(narrower.cert).serial_number == load(wider.cert).serial_number


def test_mkcert_cache_is_reused_and_remade_for_a_new_host(tmp_path: Path,
                                                         mkcert: LoggedMkcert) -> None:
    cache = tmp_path / "certs"
    first = tls.resolve("", "", ["a.example"], cache, mkcert=str(mkcert.path))
    stamp, number = first.cert.stat().st_mtime_ns, load(first.cert).serial_number

    again = tls.resolve("", "", ["a.example"], cache, mkcert=str(mkcert.path))
    assert (again.cert.stat().st_mtime_ns, load(again.cert).serial_number) == (stamp, number)
    assert len(mkcert.generations()) == 1

    wider = tls.resolve("", "", ["a.example", "b.example"], cache, mkcert=str(mkcert.path))
    assert load(wider.cert).serial_number != number
    assert "b.example" in sans(load(wider.cert))
    assert len(mkcert.generations()) == 2


def test_mkcert_cache_is_remade_when_the_ca_changes(tmp_path: Path, mkcert: LoggedMkcert,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "certs"
    first = tls.resolve("", "", [], cache, mkcert=str(mkcert.path))
    number = load(first.cert).serial_number
    monkeypatch.setenv("CAROOT", str(tmp_path / "other-ca"))

    found = tls.resolve("", "", [], cache, mkcert=str(mkcert.path))

    assert load(found.cert).serial_number != number
    new_ca = tmp_path / "other-ca" / "rootCA.pem"
    with Server(tls.server_context(found.cert, found.key), "asyncio") as server:
        assert served_serial(server.port, new_ca) == load(found.cert).serial_number


@pytest.mark.parametrize(("days_left", "reused"), [(40, True), (20, False), (-1, False)])
def test_self_signed_cache_is_remade_within_30_days_of_its_end(
        tmp_path: Path, days_left: int, reused: bool) -> None:
    cache = tmp_path / "certs"
    cache.mkdir()
    key = make_key("ec")
    old = make_cert(key, "cached", ["localhost", "127.0.0.1", "::1"], days=days_left)
    (cache / "self-signed.pem").write_bytes(pem(old))
    (cache / "self-signed-key.pem").write_bytes(key_pem(key))

    found = tls.resolve("", "", [], cache, mkcert=None)

    cert = load(found.cert)
    assert (cert.serial_number == old.serial_number) is reused
    assert not_after(cert) - datetime.now(UTC) > timedelta(days=days_left - 1 if reused else 300)


def test_a_torn_cache_pair_is_remade(tmp_path: Path) -> None:
    cache = tmp_path / "certs"
    first = tls.resolve("", "", [], cache, mkcert=None)
    number = load(first.cert).serial_number
    first.key.write_bytes(key_pem(make_key("ec")))  # as if a crash came between the two writes

    found = tls.resolve("", "", [], cache, mkcert=None)

    assert load(found.cert).serial_number != number
    with Server(tls.server_context(found.cert, found.key), "asyncio") as server:
        assert served_serial(server.port, found.cert) == load(found.cert).serial_number


# -- configured files that are wrong -----------------------------------------------------------
class Files:
    """A good pair and broken files, in one directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self.cert, self.key = write_pair(directory, "good")
        self.other_key = write_pair(directory, "other")[1]
        self.missing = directory / "missing.pem"
        self.directory = directory / "a-directory"
        self.directory.mkdir()
        self.empty = directory / "empty.pem"
        self.empty.write_bytes(b"")
        self.garbage = directory / "garbage.pem"
        self.garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                                "-----END CERTIFICATE-----\n")
        self.encrypted = directory / "encrypted.key"
        self.encrypted.write_bytes(key_pem(make_key("ec"), password=b"secret"))


# Each way a configured pair is wrong: (cert, key, the file the error must name); None: not set.
# (Unreadable is a missing file or a directory: the tests may run as root, who reads any mode.)
BROKEN: dict[str, Callable[[Files], tuple[Path | None, Path | None, Path]]] = {
    "missing cert file": lambda f: (f.missing, f.key, f.missing),
    "cert is a directory": lambda f: (f.directory, f.key, f.directory),
    "empty cert file": lambda f: (f.empty, f.key, f.empty),
    "garbage cert": lambda f: (f.garbage, f.key, f.garbage),
    "cert file holding a key": lambda f: (f.key, f.key, f.key),
    "missing key file": lambda f: (f.cert, f.missing, f.missing),
    "garbage key": lambda f: (f.cert, f.garbage, f.garbage),
    "encrypted key": lambda f: (f.cert, f.encrypted, f.encrypted),
    "key of another certificate": lambda f: (f.cert, f.other_key, f.other_key),
    "cert without key": lambda f: (f.cert, None, f.cert),
    "key without cert": lambda f: (None, f.key, f.key),
}


def broken_pair(directory: Path, case: str) -> tuple[str, str, Path]:
    cert, key, culprit = BROKEN[case](Files(directory))
    return str(cert or ""), str(key or ""), culprit


@pytest.mark.parametrize("case", BROKEN)
def test_broken_configured_files_are_an_error_naming_the_file(tmp_path: Path, case: str) -> None:
    cert, key, culprit = broken_pair(tmp_path, case)

    with pytest.raises(tls.CertificateError) as error:
        tls.resolve(cert, key, [], tmp_path / "cache", mkcert=None)

    assert str(culprit) in str(error.value)
    assert not (tmp_path / "cache").exists()  # no quiet fall back to a self-signed one
    if cert and key:
        with pytest.raises(tls.CertificateError) as error:
            tls.server_context(Path(cert), Path(key))
        assert str(culprit) in str(error.value)


# -- the context -------------------------------------------------------------------------------
def test_alpn_chooses_http11_over_h2(tmp_path: Path, loop: str) -> None:
    cert, key = write_pair(tmp_path, "server")
    with Server(tls.server_context(cert, key), loop) as server, \
            connect(server.port, cert) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"
        assert conn.version() == "TLSv1.3"


def tls11_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 allows TLS 1.1 only at level 0
    return context


def handshake_with_blocking_server(context: ssl.SSLContext,
                                   client: ssl.SSLContext) -> tuple[Exception | None, str]:
    """(the server's handshake error, the client's TLS version or error reason)."""
    outcome: dict[str, Exception | None] = {"server": None}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            try:
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except Exception as exc:
                outcome["server"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sock = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        try:
            with client.wrap_socket(sock) as conn:
                result = str(conn.version())
        except ssl.SSLError as exc:
            result = str(exc.reason)
        finally:
            sock.close()
        thread.join(TIMEOUT)
    return outcome["server"], result


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_is_refused(tmp_path: Path, loop: str) -> None:
    cert, key = write_pair(tmp_path, "server")
    # The same client against a server that allows TLS 1.1: the refusals below are the server's.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(cert, key)
    assert handshake_with_blocking_server(permissive, tls11_client()) == (None, "TLSv1.1")

    server_error, client_sees = handshake_with_blocking_server(tls.server_context(cert, key),
                                                               tls11_client())
    assert isinstance(server_error, ssl.SSLError)
    assert server_error.reason == "UNSUPPORTED_PROTOCOL"
    assert client_sees == "TLSV1_ALERT_PROTOCOL_VERSION"
    # asyncio's and uvloop's TLS close the connection without sending the alert
    with Server(tls.server_context(cert, key), loop) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock, \
            pytest.raises(ssl.SSLError):
        tls11_client().wrap_socket(sock)


# -- reload ------------------------------------------------------------------------------------
def test_reload_serves_the_renewal_to_new_connections_only(tmp_path: Path, loop: str) -> None:
    # The renewal changes the key type too (ECDSA to RSA): reloading the live context in place
    # would keep serving the old ECDSA certificate (test_why_reload_swaps_contexts).
    live = tmp_path / "live"
    live.mkdir()
    old_cert, old_key = write_pair(tmp_path, "old", "ec")
    new_cert, new_key = write_pair(tmp_path, "new", "rsa")
    trusted = tmp_path / "both.pem"
    trusted.write_bytes(old_cert.read_bytes() + new_cert.read_bytes())
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    context = tls.server_context(cert, key)

    with Server(context, loop) as server, connect(server.port, trusted) as kept:
        assert exchange(kept) == RESPONSE
        assert serial(kept) == load(old_cert).serial_number
        shutil.copy(new_key, key)
        shutil.copy(new_cert, cert)
        server.call(tls.reload, context, cert, key)

        new_serial = load(new_cert).serial_number
        assert served_serial(server.port, trusted, "localhost") == new_serial
        assert served_serial(server.port, trusted, "127.0.0.1") == new_serial  # no SNI sent
        with connect(server.port, trusted) as fresh:
            assert fresh.selected_alpn_protocol() == "http/1.1"
        done = curl(server.port, new_cert, "localhost")
        assert (done.returncode, done.stdout) == (0, "ok\n\n1.1"), done.stderr
        # the connection made before the reload goes on
        assert exchange(kept) == RESPONSE
        assert exchange(kept) == RESPONSE


@pytest.mark.parametrize("case", ["garbage cert", "key of another certificate",
                                  "missing key file", "encrypted key"])
def test_broken_renewal_keeps_the_old_certificate(tmp_path: Path, loop: str, case: str) -> None:
    first_cert, first_key = write_pair(tmp_path, "first")
    second_cert, second_key = write_pair(tmp_path, "second")
    context = tls.server_context(first_cert, first_key)
    broken_cert, broken_key, culprit = broken_pair(tmp_path / "broken", case)

    with Server(context, loop) as server:
        # broken before any reload: the context's own certificate stays
        with pytest.raises(tls.CertificateError, match=re.escape(str(culprit))):
            server.call(tls.reload, context, Path(broken_cert), Path(broken_key))
        assert served_serial(server.port, first_cert) == load(first_cert).serial_number
        # broken after a good reload: the good renewal stays
        server.call(tls.reload, context, second_cert, second_key)
        with pytest.raises(tls.CertificateError, match=re.escape(str(culprit))):
            server.call(tls.reload, context, Path(broken_cert), Path(broken_key))
        assert served_serial(server.port, second_cert) == load(second_cert).serial_number


def test_reload_needs_a_context_from_server_context(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, "server")
    with pytest.raises(TypeError, match="server_context"):
        tls.reload(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)


def test_why_reload_swaps_contexts(tmp_path: Path, loop: str) -> None:
    """The finding tls.reload is built on, kept as a test: load_cert_chain() again on a live
    context reaches new handshakes, but an OpenSSL context keeps one certificate per key type,
    so after ECDSA → RSA clients that prefer ECDSA still get the old one."""
    ec_cert, ec_key = write_pair(tmp_path, "ec1", "ec")
    ec2_cert, ec2_key = write_pair(tmp_path, "ec2", "ec")
    rsa_cert, rsa_key = write_pair(tmp_path, "rsa", "rsa")
    trusted = tmp_path / "all.pem"
    trusted.write_bytes(b"".join(p.read_bytes() for p in (ec_cert, ec2_cert, rsa_cert)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ec_cert, ec_key)
    with Server(context, loop) as server:
        server.call(context.load_cert_chain, ec2_cert, ec2_key)
        assert served_serial(server.port, trusted) == load(ec2_cert).serial_number
        server.call(context.load_cert_chain, rsa_cert, rsa_key)
        assert served_serial(server.port, trusted) == load(ec2_cert).serial_number
