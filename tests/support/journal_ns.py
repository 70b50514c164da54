"""Run a command under a private systemd-journald, with stderr as a journal stream.

    unshare -m --propagation private -- python journal_ns.py OUTDIR -- COMMAND ARGS...

Inside its own mount namespace (so the host's /run and journal are untouched) it mounts tmpfs
on /run and /var/log/journal, starts systemd-journald, connects the command's stdout and stderr
to journald's stdout stream exactly as systemd does for StandardOutput=journal (and sets
JOURNAL_STREAM), waits for the command, and exports the journal as JSON lines to
OUTDIR/journal.json. The command gets SIGTERM when OUTDIR/stop appears. If OUTDIR/after.json
holds an argv, that command then runs inside too (its output in after.out, code in after.rc).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

JOURNALD = "/lib/systemd/systemd-journald"
STDOUT_SOCKET = "/run/systemd/journal/stdout"


def wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"journal_ns: {path} did not appear")
        time.sleep(0.02)


def journal_stream(identifier: str) -> socket.socket:
    """A stream connected to journald, announced with systemd's stdout-stream header."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(STDOUT_SOCKET)
    sock.shutdown(socket.SHUT_RD)
    # identifier, unit id, priority, level prefix, forward to syslog, kmsg, console
    sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    return sock


def main() -> None:
    outdir, command = Path(sys.argv[1]), sys.argv[3:]
    for target in ("/run", "/var/log/journal"):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "rip-test", target], check=True)
    os.makedirs("/run/systemd/journal", exist_ok=True)
    journald = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(STDOUT_SOCKET)
        stream = journal_stream(Path(command[0]).name)
        st = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen(command, stdout=stream, stderr=stream, env=env)
        stream.close()
        (outdir / "started").write_text(str(proc.pid))
        deadline = time.monotonic() + 120  # bounded even if the test never asks to stop
        while proc.poll() is None:
            if (outdir / "stop").exists() or time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                break
            time.sleep(0.02)
        (outdir / "exit").write_text(str(proc.returncode))
        time.sleep(0.2)  # journald reads the stream asynchronously
        after = outdir / "after.json"  # a command to run inside, against this journal
        if after.exists():
            done = subprocess.run(json.loads(after.read_text()), capture_output=True,
                                  text=True, timeout=60)
            (outdir / "after.out").write_text(done.stdout + done.stderr)
            (outdir / "after.rc").write_text(str(done.returncode))
        with open(outdir / "journal.json", "wb") as out:
            subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"],
                           stdout=out, check=True)
    finally:
        journald.terminate()
        journald.wait(10)


if __name__ == "__main__":
    main()
