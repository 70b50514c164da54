"""The recycling policy `r:REQUESTS,SECONDSs,RELOADSr` (default `r:10000,3600s,10r`).

A worker recycles (finishes its request, exits with ExitCode.RECYCLE) after serving REQUESTS
requests, after living SECONDS seconds, or after RELOADS module reloads, whichever comes first.
A limit of 0 disables it. Jitter lowers the request and age limits by a random share per
worker so that workers started together do not all leave together.

A worker also recycles after a request that leaves its resident memory above `max_rss`
(settings.py; worker/core.py measures it, memory.py reads it).

While the app on disk cannot be loaded, a recycled worker's successor would not start: the
manager then holds recycling (HOLD_SIGNAL to each worker), and the limits wait until it
releases them (RELEASE_SIGNAL: the app loads again) or a rolling restart replaces the worker.

Why a worker recycles is the first words of what it says (its log line, and the STATUS= it
sends when it asks for a successor or stops): `reason_text` writes them in the worker, and
`reason_of` reads them back in the manager, from the embedded supervisor's notify socket or
from systemd's StatusText of a unit that exited 75, to count recycles by reason.
"""

from __future__ import annotations

import random
import re
import signal
from dataclasses import dataclass

#: Manager → worker: the code on disk cannot load; keep serving past the recycling limits.
HOLD_SIGNAL = signal.SIGUSR1
#: Manager → worker: the code on disk loads again; a limit passed meanwhile recycles now.
RELEASE_SIGNAL = signal.SIGUSR2

#: Why a worker recycled: the label `reason` of the metric rip_worker_recycles ("other": a
#: STATUS= that names none of them, as from a worker of an older version).
REASONS = ("requests", "age", "reloads", "memory", "other")
_TEXTS = {"requests": "recycling after {} requests", "age": "recycling after {} s",
          "reloads": "recycling after {} module reloads", "memory": "recycling on memory: {}"}
_REASON = re.compile(r"^recycling (?:after \d+ (?P<requests>requests\b)|"
                     r"after \d+ (?P<reloads>module reloads\b)|after \d+ (?P<age>s\b)|"
                     r"(?P<memory>on memory:))")

_TOKEN = re.compile(r"^r:(?P<requests>\d+),(?P<seconds>\d+)s,(?P<reloads>\d+)r$")


@dataclass(frozen=True)
class RecyclePolicy:
    requests: int = 10_000
    seconds: int = 3_600
    reloads: int = 10

    @classmethod
    def parse(cls, text: str) -> RecyclePolicy:
        match = _TOKEN.match(text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not a recycling policy (r:REQUESTS,SECONDSs,RELOADSr, "
                "e.g. r:10000,3600s,10r; 0 disables a limit)"
            )
        return cls(int(match["requests"]), int(match["seconds"]), int(match["reloads"]))

    def __str__(self) -> str:
        return f"r:{self.requests},{self.seconds}s,{self.reloads}r"

    def with_jitter(self, share: float, rng: random.Random | None = None) -> RecyclePolicy:
        """This policy with REQUESTS and SECONDS each lowered by up to `share` (0 ≤ share < 1)."""
        if not 0 <= share < 1:
            raise ValueError(f"jitter {share!r} must be at least 0 and below 1")
        rng = rng or random.Random()

        def lower(limit: int) -> int:
            return max(1, limit - rng.randint(0, int(limit * share))) if limit else 0

        return RecyclePolicy(lower(self.requests), lower(self.seconds), self.reloads)


def reason_text(reason: str, detail: object) -> str:
    """What a worker says when it recycles for `reason` (one of REASONS but "other"): the
    number of requests, seconds or module reloads, or for "memory" what it measured."""
    return _TEXTS[reason].format(detail)


def reason_of(status: str) -> str:
    """The reason (one of REASONS) of a recycling worker's STATUS= (reason_text)."""
    match = _REASON.match(status)
    if match is None:
        return "other"
    return next(name for name, found in match.groupdict().items() if found)
