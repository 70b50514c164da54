"""Starting a process the way systemd's socket activation does.

The sockets go to fds 3, 4, … of the child, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set.
LISTEN_PID must be the child's own pid, known only after fork; so the environment is written in
the child between fork and exec (Popen's preexec_fn with env=None makes exec use the child's
environ). The embedded supervisor and the test suite both start workers through here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

LISTEN_FDS_START = 3
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def spawn(
    argv: Sequence[str],
    sockets: Sequence[tuple[str, int]],
    env: Mapping[str, str],
    *,
    supervised: bool = False,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start `argv` with `sockets` ((name, fd) pairs) passed as socket activation would.

    `env` is the child's whole environment (LISTEN_* are added). Other keyword arguments go to
    Popen (stdout, stderr, cwd …); the child inherits no other descriptor of ours, since Python
    creates every descriptor non-inheritable.

    `supervised`: the child gets a session of its own, so that a terminal's Ctrl-C reaches only
    the supervisor (which stops its children in order), and it is sent SIGTERM if the
    supervisor dies (PR_SET_PDEATHSIG), as a unit is stopped with its manager.
    """
    fds = [fd for _, fd in sockets]
    names = ":".join(name for name, _ in sockets)
    child_env = {k: v for k, v in env.items() if not k.startswith("LISTEN_")}
    if fds:
        child_env["LISTEN_FDS"] = str(len(fds))
        child_env["LISTEN_FDNAMES"] = names

    def in_child() -> None:
        # First move every socket above the target range, so that placing one cannot
        # overwrite another that happens to sit at 3, 4, …
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, LISTEN_FDS_START + len(fds)) for fd in fds]
        for index, fd in enumerate(high):
            os.dup2(fd, LISTEN_FDS_START + index)  # inheritable, unlike `fd`
            os.close(fd)
        os.environ.clear()
        os.environ.update(child_env)
        if fds:
            os.environ["LISTEN_PID"] = str(os.getpid())
        if supervised:
            os.setsid()
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return subprocess.Popen(list(argv), env=None, preexec_fn=in_child, close_fds=False, **popen)
