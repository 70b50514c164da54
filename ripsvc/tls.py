"""The balancer's certificate and its TLS server context.

Where the certificate comes from, first that applies: the configured files; mkcert, when it is
installed (its certificates are trusted by the browsers of a machine where `mkcert -install`
was run once, by hand); a self-signed certificate made here. The last two are kept in a cache
directory and made again when they no longer cover the host names or near their end.

How a renewed certificate reaches a running server (reload) was found by experiment, CPython
3.11 with OpenSSL 3.0, under asyncio and uvloop alike:
- Calling load_cert_chain() again on the live context does reach new handshakes (each
  connection copies the context's certificate when it is made, so open ones keep theirs), but
  an OpenSSL context holds one certificate per key type: after an ECDSA certificate is replaced
  by an RSA one, the old ECDSA one is still served to every client that prefers ECDSA (all
  current ones). And a failed load is not undone: a certificate read before its key is found
  not to match stays in the context without its key, and every handshake fails.
- The server-name callback runs on every ClientHello, with server_name None when the client
  sends no SNI (connections to an IP address; TLS 1.2 and 1.3), and a handshake whose context is
  switched there is served wholly from the new context.
So reload() builds a complete new context, validated, and the live context's sni_callback hands
it to each handshake from then on; a broken renewal never touches what is served.

cryptography (≈ 14 MB, tens of ms) is imported by the functions that read or make
certificates, not with this module: the manager, the balancer and the generator import it (for
CertificateError, through edge.py) whether or not the app serves HTTPS.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ripsvc import hosts
from ripsvc.files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
#: A cached certificate closer than this to its end is made again.
RENEW_BEFORE = timedelta(days=30)
SELF_SIGNED_LIFETIME = timedelta(days=365)
SELF_SIGNED_CN = "rip-server self-signed"
MKCERT_TIMEOUT = 60.0


class CertificateError(Exception):
    """A certificate problem, naming the file; start-up fails with it."""


@dataclass(frozen=True)
class Certificate:
    """The files to serve, and where they came from."""

    cert: Path
    key: Path
    origin: str  # "configured" | "mkcert" | "self-signed"


def resolve(cert: str, key: str, hosts: Sequence[str], cache_dir: Path, *,
            mkcert: str | None = "") -> Certificate:
    """The certificate to serve: the configured files (`cert` and `key`, both or neither),
    else one made by mkcert (`mkcert`: the program; "" finds it on PATH now, None means it is
    not installed), else a self-signed one. The last two are cached in `cache_dir` and cover
    `hosts` (wildcards allowed, a lone "*" left out) and the local names. A cached pair is
    used again while it covers every name, has more than RENEW_BEFORE to run and (mkcert)
    comes from the CA in the current CAROOT; new ones are written atomically, the key 0600,
    in a directory made 0700.

    Configured files are checked now: unreadable, not PEM, or a key of another certificate is a
    CertificateError naming the file, never a quiet fall back to another source.
    """
    if cert or key:
        if not key:
            raise CertificateError(f"certificate {cert} is configured without its key")
        if not cert:
            raise CertificateError(f"key {key} is configured without its certificate")
        _check_pair(Path(cert), Path(key))
        return Certificate(Path(cert), Path(key), "configured")
    names = _names(hosts)
    if mkcert == "":
        mkcert = shutil.which("mkcert")
    _make_cache_dir(cache_dir)
    with _locked(cache_dir):  # two resolves at once must not mix one's key with the other's cert
        if mkcert is not None:
            return _from_mkcert(mkcert, names, cache_dir)
        return _self_signed(names, cache_dir)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context serving this certificate: TLS 1.2 or later, ALPN http/1.1,
    OpenSSL's secure defaults; reload() can renew it. A bad pair is a CertificateError."""
    context = _new_context(cert, key)
    context.sni_callback = _Renewable()
    return context


def reload(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Serve a renewed certificate from `context` (made by server_context): connections made
    afterwards get it, open ones keep theirs. The files are checked first; a broken renewal
    raises CertificateError and the old certificate stays served."""
    renewable = context.sni_callback
    if not isinstance(renewable, _Renewable):
        raise TypeError("reload() needs a context made by tls.server_context()")
    renewable.current = _new_context(cert, key)


# -- the context -------------------------------------------------------------------------------
class _Renewable:
    """The live context's sni_callback: hands each handshake the latest certificate's context.
    Until the first reload it leaves handshakes on the live context itself. (Serving another
    certificate per server name, some day, would be chosen here too.)"""

    def __init__(self) -> None:
        self.current: ssl.SSLContext | None = None

    def __call__(self, connection: ssl.SSLObject, server_name: str | None,
                 context: ssl.SSLContext) -> None:
        if self.current is not None:
            connection.context = self.current


def _new_context(cert: Path, key: Path) -> ssl.SSLContext:
    _check_pair(cert, key)
    # PROTOCOL_TLS_SERVER has OpenSSL's and CPython's secure defaults (ECDHE AEAD ciphers first,
    # no compression, security level 2). create_default_context(Purpose.CLIENT_AUTH) would add
    # only the system's CA bundle, for client certificates we never ask for.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_NO_RENEGOTIATION)
    context.set_alpn_protocols(["http/1.1"])

    def no_password() -> NoReturn:  # OpenSSL would otherwise ask for one on the terminal
        raise CertificateError(f"{key}: the private key is encrypted; give an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except OSError as exc:  # ssl.SSLError included
        raise CertificateError(f"{cert}, {key}: OpenSSL refuses the pair: {exc}") from None
    return context


def _check_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """The certificate (the first of its file), if the key is the one for it; errors name
    the file at fault."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read(cert_path, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertificateError(f"{cert_path}: not a PEM certificate") from None
    key_pem = _read(key_path, "private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(
            f"{key_path}: the private key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{key_path}: not a PEM private key of a supported type") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(f"{key_path}: not the private key of {cert_path}")
    return cert


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what}: {exc.strerror}") from None


# -- names -------------------------------------------------------------------------------------
def _names(hosts: Sequence[str]) -> list[str]:
    """The certificate's names: `hosts` and the local ones, canonical, each once."""
    names = [_canonical(host) for host in hosts if host.strip() not in ("", "*")]
    return list(dict.fromkeys([*names, *LOCAL_NAMES]))


def _canonical(host: str) -> str:
    """The registry's canonical form (hosts.normalize), so certificate and routing agree."""
    try:
        return hosts.normalize(host)
    except ValueError as exc:
        raise CertificateError(f"host {host!r}: {exc}") from None


def _covered(cert: x509.Certificate) -> set[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = (name.lower() for name in san.get_values_for_type(x509.DNSName))
    ips = (str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return {*dns, *ips}


# -- the cache ---------------------------------------------------------------------------------
def _make_cache_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask
    except FileExistsError:
        if not path.is_dir():
            raise CertificateError(f"{path}: the certificate cache is not a directory") from None
    except OSError as exc:
        raise CertificateError(f"{path}: cannot make the certificate cache: {exc.strerror}") \
            from None


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    try:
        fd = os.open(cache_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CertificateError(f"{cache_dir}: cannot lock the certificate cache: "
                               f"{exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _reusable(cert_path: Path, key_path: Path, names: Sequence[str],
              issuer_key_id: bytes | None = None) -> bool:
    """Is the cached pair whole, for every name, valid beyond RENEW_BEFORE (and, when given,
    issued by the CA with this key identifier)?"""
    from cryptography import x509

    try:
        cert = _check_pair(cert_path, key_path)
    except CertificateError:
        return False
    now = datetime.now(UTC)
    if not (_not_before(cert) <= now and _not_after(cert) - now > RENEW_BEFORE):
        return False
    if not set(names) <= _covered(cert):
        return False
    if issuer_key_id is not None:
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except x509.ExtensionNotFound:
            return False
        return aki.key_identifier == issuer_key_id
    return True


def _not_after(cert: x509.Certificate) -> datetime:
    try:
        return cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42 (Debian 12 has 38): naive UTC
        return cert.not_valid_after.replace(tzinfo=UTC)


def _not_before(cert: x509.Certificate) -> datetime:
    try:
        return cert.not_valid_before_utc
    except AttributeError:
        return cert.not_valid_before.replace(tzinfo=UTC)


# -- mkcert ------------------------------------------------------------------------------------
def _from_mkcert(mkcert: str, names: Sequence[str], cache_dir: Path) -> Certificate:
    cert_path, key_path = cache_dir / "mkcert.pem", cache_dir / "mkcert-key.pem"
    # A certificate of an earlier CA (CAROOT changed, CA made again) is no longer trusted.
    ca_key_id = _mkcert_ca_key_id(mkcert)
    if ca_key_id is not None and _reusable(cert_path, key_path, names, ca_key_id):
        return Certificate(cert_path, key_path, "mkcert")
    # mkcert writes into a private directory first, so the cache changes by os.replace only.
    # Never `-install`: that changes the system's trust store. A missing CA is made in CAROOT.
    work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".mkcert-"))
    try:
        new_cert, new_key = work / cert_path.name, work / key_path.name
        _run_mkcert(mkcert, ["-cert-file", str(new_cert), "-key-file", str(new_key),
                             "--", *names])
        try:
            os.chmod(new_key, 0o600)
            os.chmod(new_cert, 0o644)
            os.replace(new_key, key_path)
            os.replace(new_cert, cert_path)
        except OSError as exc:
            raise CertificateError(f"{cache_dir}: cannot store mkcert's certificate: "
                                   f"{exc.strerror}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _check_pair(cert_path, key_path)
    return Certificate(cert_path, key_path, "mkcert")


def _mkcert_ca_key_id(mkcert: str) -> bytes | None:
    """The key identifier of mkcert's CA in the current CAROOT; None if there is none yet."""
    from cryptography import x509

    caroot = _run_mkcert(mkcert, ["-CAROOT"]).strip()
    try:
        ca = x509.load_pem_x509_certificate((Path(caroot) / "rootCA.pem").read_bytes())
        return ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None


def _run_mkcert(mkcert: str, args: list[str]) -> str:
    try:
        done = subprocess.run([mkcert, *args], capture_output=True, text=True,
                              timeout=MKCERT_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        raise CertificateError(f"{mkcert}: cannot run mkcert: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CertificateError(f"{mkcert}: no answer in {MKCERT_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise CertificateError(f"{mkcert} {' '.join(args)} failed "
                               f"(exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


# -- self-signed -------------------------------------------------------------------------------
def _self_signed(names: Sequence[str], cache_dir: Path) -> Certificate:
    cert_path, key_path = cache_dir / "self-signed.pem", cache_dir / "self-signed-key.pem"
    if not _reusable(cert_path, key_path, names):
        key_pem, cert_pem = _make_self_signed(names)
        try:
            write_atomic(key_path, key_pem, 0o600)  # a crash between the two leaves a pair
            write_atomic(cert_path, cert_pem, 0o644)  # _reusable() refuses: made again
        except OSError as exc:
            raise CertificateError(f"{cache_dir}: cannot store the self-signed certificate: "
                                   f"{exc.strerror}") from None
    return Certificate(cert_path, key_path, "self-signed")


def _make_self_signed(names: Sequence[str]) -> tuple[bytes, bytes]:
    """(key, certificate) in PEM. An ECDSA P-256 key rather than RSA 2048: made in a
    millisecond instead of up to a second, as strong as RSA 3072, and accepted by every
    client that speaks TLS 1.2."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_CN)])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))  # a client whose clock is a little behind
        .not_valid_after(now + SELF_SIGNED_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
