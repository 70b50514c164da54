"""Logging for every rip process: journald with structured fields under systemd, stderr otherwise.

systemd sets JOURNAL_STREAM when stderr is connected to the journal; then we send native journal
entries so that fields such as APP and WORKER can be filtered on (`journalctl APP=myapp`).
"""

from __future__ import annotations

import logging
import os
import sys

from systemd import journal

ROOT = "rip"


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal (JOURNAL_STREAM matches it)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup(role: str, *, level: int = logging.INFO, **fields: str) -> logging.Logger:
    """Configure the `rip` logger for a process of `role` ("worker", "balancer", …).

    `fields` (upper-case journal field names, e.g. APP="hello", WORKER="2") are attached to
    every journal entry; on stderr they prefix each line instead.
    """
    logger = logging.getLogger(ROOT)
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    handler: logging.Handler
    if stderr_is_journal():
        handler = journal.JournalHandler(SYSLOG_IDENTIFIER=f"rip-{role}", **fields)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        tags = " ".join(f"{k.lower()}={v}" for k, v in fields.items())
        prefix = f"rip-{role}[%(process)d]" + (f" {tags}" if tags else "")
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix} %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")
