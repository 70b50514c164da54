"""What the manager prepares for the balancer's edge: the certificate it serves, the host
registry file, and the balancer arguments that name them.

The manager runs as root (under systemd) and the balancer as user rip, so the manager resolves
the certificate (configured files, mkcert, or self-signed; cached in the state directory) and
copies it into the app's runtime directory, readable by group rip only. The balancer reads the
copy at start and on `tls-reload`; it never needs to read /etc/letsencrypt or a key owned by
root. The same layout serves the embedded mode, in the user's own directories.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Sequence
from pathlib import Path

from ripsvc import hosts, tls
from ripsvc.files import write_atomic
from ripsvc.sockets import Bind
from ripsvc.tls import Certificate, CertificateError

__all__ = ["CertificateError", "balancer_args", "cert_paths", "hosts_file",
           "install_certificate"]

TLS_DIR = "tls"
CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


def cert_paths(runtime: Path) -> tuple[Path, Path]:
    """Where the balancer reads its certificate and key (the manager's copies)."""
    return runtime / TLS_DIR / CERT_NAME, runtime / TLS_DIR / KEY_NAME


def hosts_file(state: Path) -> Path:
    return state / hosts.FILE_NAME


def balancer_args(binds: Sequence[Bind], runtime: Path, state: Path) -> list[str]:
    """The balancer's edge arguments for these listening addresses (actual ports)."""
    args = ["--hosts-file", str(hosts_file(state))]
    tls_ports = [b.port for b in binds if b.tls]
    for port in tls_ports:
        args += ["--tls-port", str(port)]
    for bind in binds:
        if bind.redirect:
            args += ["--redirect-port", str(bind.port)]
    if tls_ports:
        cert, key = cert_paths(runtime)
        args += ["--cert", str(cert), "--key", str(key)]
    return args


def install_certificate(cert: str, key: str, names: Sequence[str], state: Path,
                        runtime: Path) -> Certificate:
    """Resolve the certificate and put the balancer's copy in place (atomically: a balancer
    reloading meanwhile reads the old pair or the new one). Raises CertificateError."""
    found = tls.resolve(cert, key, names, state / "certs")
    tls.server_context(found.cert, found.key)  # a pair the balancer would refuse fails here
    target_cert, target_key = cert_paths(runtime)
    target_cert.parent.mkdir(mode=0o750, exist_ok=True)
    gid = _rip_gid()
    if gid is not None:
        os.chown(target_cert.parent, -1, gid)
    # Key first: a balancer that sees the new certificate also finds its key.
    _copy(found.key, target_key, gid)
    _copy(found.cert, target_cert, gid)
    return found


def _rip_gid() -> int | None:
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam("rip").gr_gid
    except KeyError:
        return None


def _copy(source: Path, target: Path, gid: int | None) -> None:
    write_atomic(target, source.read_bytes(), 0o640, gid)
