"""A bounded load for tests: `python loadgen.py URL STOPFILE [--clients N] [--max-seconds S]
[--max-requests R]`.

N threads send GETs over keep-alive connections until STOPFILE exists (or S seconds pass, or
R requests were sent), then print one JSON line: {"ok": n, "failed": n, "errors": [...first
few...], "error_times": [seconds after the start of each failure, the first 1000], "bodies":
{body: n}}. Run inside a box's network namespace with `nsenter -t PID -n`, or in a network
namespace with `ip netns exec NAME`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter
from urllib.parse import urlsplit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("stopfile")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    args = p.parse_args()
    url = urlsplit(args.url)
    start = time.monotonic()
    deadline = start + args.max_seconds
    lock = threading.Lock()
    ok, failed, errors, bodies = [0], [0], [], Counter()
    error_times: list[float] = []

    def more() -> bool:
        return (not os.path.exists(args.stopfile) and time.monotonic() < deadline
                and ok[0] + failed[0] < args.max_requests)

    def failure(text: str) -> None:
        failed[0] += 1
        errors.append(text)
        if len(error_times) < 1000:
            error_times.append(round(time.monotonic() - start, 3))

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        while more():
            try:
                conn.request("GET", url.path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                good = resp.status == 200
                with lock:
                    if good:
                        ok[0] += 1
                        bodies[body] += 1
                    else:
                        failure(f"{resp.status} {body[:80]}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failure(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ok": ok[0], "failed": failed[0], "errors": errors[:10],
                      "error_times": error_times, "bodies": dict(bodies)}))


if __name__ == "__main__":
    main()
