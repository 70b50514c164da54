"""Static files served by the balancer (issue 22): real balancer and worker processes, real
clients, the files on disk. Where behaviour is a choice, nginx's is said beside it."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from ripsvc.mounts import StaticMounts, parse_static
from tests.support.client import fetch, pipeline, raw_tcp, request, tcp
from tests.support.waiting import wait_for

CSS = b"body { color: #123; }\n" * 40


@pytest.fixture
def site(short_tmp: Path) -> Path:
    """A directory to serve, and a secret beside it that must never be served."""
    root = short_tmp / "www"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "app.css").write_bytes(CSS)
    (root / "app.js").write_bytes(b"console.log('plain');\n" * 50)
    (root / "app.js.gz").write_bytes(gzip.compress(b"console.log('gzip');\n" * 50))
    (root / "app.js.br").write_bytes(b"brotli bytes (not decoded by this test)")
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>\n")
    (root / "sub" / "page.txt").write_bytes(b"page\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 16)  # 4 KiB
    (root / ".env").write_bytes(b"SECRET=dotfile\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core] secret\n")
    (short_tmp / "secret.txt").write_bytes(b"outside the mount\n")
    (short_tmp / "outdir").mkdir()
    (short_tmp / "outdir" / "x.txt").write_bytes(b"outside too\n")
    os.symlink(short_tmp / "secret.txt", root / "out.txt")
    os.symlink(short_tmp / "outdir", root / "outdir")
    os.symlink(root / "app.css", root / "in.css")
    os.mkfifo(root / "fifo")
    return root


def mount(root: Path, prefix: str = "/static/", *options: str) -> str:
    """One mount as rip-server's --static takes it."""
    return ";".join([f"{prefix}={root}", *options])


def mounts(*specs: str) -> tuple[str, str]:
    """The balancer's --static for these mounts: their JSON, as rip-server passes it."""
    found = StaticMounts()
    for spec in specs:
        found = found.merged(parse_static(spec))
    return ("--static", str(found))


def test_a_file_is_served_with_type_length_and_validators_and_no_worker_sees_it(
        start_stack, site, short_tmp):
    log = short_tmp / "access.json"
    stack = start_stack(workers=1, stdout=str(log), args=(
        "--json-logging", *mounts(mount(site, "/static/", "cache-control=public, max-age=60"))))
    reply = fetch(stack.port, "/static/app.css")
    assert reply.status == 200 and reply.body == CSS
    st = (site / "app.css").stat()
    assert reply.headers["content-type"] == "text/css; charset=utf-8"
    assert reply.headers["content-length"] == str(len(CSS))
    assert reply.headers["etag"] == f'"{int(st.st_mtime):x}-{st.st_size:x}"'  # nginx's form
    assert reply.headers["last-modified"] == email.utils.formatdate(int(st.st_mtime),
                                                                    usegmt=True)
    assert reply.headers["accept-ranges"] == "bytes"
    assert reply.headers["cache-control"] == "public, max-age=60"
    assert "date" in reply.headers and "x-pid" not in reply.headers  # the worker's mark
    assert fetch(stack.port, "/static/data.bin").headers["content-type"] == \
        "application/octet-stream"
    assert fetch(stack.port, "/static/app.js").headers["content-type"] == \
        "text/javascript; charset=utf-8"
    # HEAD: the same head, no body, and the connection stays in step.
    conn = tcp(stack.port)
    head = request(conn, "HEAD", "/static/app.css")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(CSS))
    assert head.headers["etag"] == reply.headers["etag"]
    assert request(conn, "GET", "/static/sub/page.txt").body == b"page\n"
    assert request(conn, "GET", "/pid").headers.get("x-pid")  # the app's own paths still go
    conn.close()
    rid = reply.headers["x-request-id"]
    wait_for(lambda: rid in log.read_text(), what="the access log line")
    entry = next(json.loads(line) for line in log.read_text().splitlines() if rid in line)
    assert (entry["status"], entry["worker"], entry["bytes"]) == (200, "static", len(CSS))


def test_no_worker_is_needed(start_stack, site):
    stack = start_stack(workers=0, args=mounts(mount(site)))
    assert fetch(stack.port, "/static/app.css").body == CSS


@pytest.mark.parametrize(("target", "status"), [
    ("/static/../secret.txt", 400), ("/static/sub/../../secret.txt", 400),
    ("/static/%2e%2e/secret.txt", 400), ("/static/%2E%2e/secret.txt", 400),
    ("/static/.%2e/secret.txt", 400), ("/static/sub/..%2f..%2fsecret.txt", 400),
    ("/static/..%5csecret.txt", 400), ("/static/..\\secret.txt", 400),
    ("/static/./app.css", 400), ("/static/app.css%00.txt", 400),
    ("/static/sub%2fpage.txt", 404), ("/static/sub%5cpage.txt", 404),
    ("/static/sub\\page.txt", 404), ("/static/%2fetc%2fpasswd", 404),
    ("/static//etc/passwd", 404),
], ids=["dotdot", "dotdot-inside", "encoded", "encoded-upper", "half-encoded",
        "encoded-slashes", "encoded-backslash", "backslash", "dot", "nul", "encoded-slash",
        "encoded-backslash-name", "backslash-name", "encoded-absolute", "double-slash"])
def test_traversal_attempts_are_refused(start_stack, site, target, status):
    """nginx answers the same forms 400 or 404 too (it normalises `..` inside the root and
    refuses it above; rip refuses every `..` and `.`)."""
    stack = start_stack(workers=1, args=mounts(mount(site)))
    reply = raw_tcp(stack.port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                    b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
    assert b"outside" not in reply and b"root:" not in reply


def test_dotfiles_are_hidden_unless_allowed(start_stack, site):
    """nginx serves dotfiles unless told not to (`location ~ /\\.` deny): rip does not."""
    stack = start_stack(workers=1, args=mounts(mount(site), mount(site, "/dots/", "dotfiles")))
    for target in ("/static/.env", "/static/.git/config", "/static/%2eenv"):
        reply = fetch(stack.port, target)
        assert reply.status == 404 and b"SECRET" not in reply.body and b"secret" not in reply.body
    assert fetch(stack.port, "/dots/.env").body == b"SECRET=dotfile\n"
    assert fetch(stack.port, "/dots/.git/config").status == 200


def test_symbolic_links_out_of_the_mount_are_refused_unless_allowed(start_stack, site):
    """nginx follows every link unless `disable_symlinks`; rip only those that stay inside."""
    stack = start_stack(workers=1, args=mounts(mount(site), mount(site, "/links/", "symlinks")))
    # The mount that allows them first: what it served is no precedent for the other.
    assert fetch(stack.port, "/links/out.txt").body == b"outside the mount\n"
    assert fetch(stack.port, "/links/outdir/x.txt").body == b"outside too\n"
    assert fetch(stack.port, "/static/in.css").body == CSS  # a link inside the mount
    for target in ("/static/out.txt", "/static/outdir/x.txt"):
        reply = fetch(stack.port, target)
        assert reply.status == 403 and b"outside" not in reply.body
    # A file served once, then replaced by a link out of the mount: checked again.
    (site / "swap.txt").write_bytes(b"inside\n")
    assert fetch(stack.port, "/static/swap.txt").body == b"inside\n"
    (site / "swap.txt").unlink()
    os.symlink(site.parent / "secret.txt", site / "swap.txt")
    assert fetch(stack.port, "/static/swap.txt").status == 403


def test_directories_are_never_listed_an_index_is_served(start_stack, site):
    stack = start_stack(workers=1, args=mounts(mount(site), mount(site, "/site/",
                                                                "index=index.html")))
    assert fetch(stack.port, "/static/sub/").status == 404  # no index: nothing (nginx: 403)
    assert fetch(stack.port, "/static/sub").status == 404
    assert fetch(stack.port, "/static/fifo").status == 404  # not a regular file: not opened
    assert fetch(stack.port, "/site/sub/").body == b"<h1>sub</h1>\n"
    moved = fetch(stack.port, "/site/sub?a=1")  # as nginx: to the directory's URL
    assert moved.status == 301 and moved.headers["location"] == "/site/sub/?a=1"
    assert fetch(stack.port, "/site").headers["location"] == "/site/"
    assert fetch(stack.port, "/site/empty/").status == 404  # a directory without its index


def test_conditional_requests_get_304(start_stack, site):
    stack = start_stack(workers=1, args=mounts(mount(site, "/static/", "cache-control=no-cache")))
    first = fetch(stack.port, "/static/app.css")
    etag, modified = first.headers["etag"], first.headers["last-modified"]

    def status(**headers: str) -> int:
        reply = fetch(stack.port, "/static/app.css", headers=headers)
        if reply.status == 304:
            assert reply.body == b"" and reply.headers["etag"] == etag
            assert reply.headers["cache-control"] == "no-cache"
            assert "content-length" not in reply.headers
        return reply.status

    assert status(**{"If-None-Match": etag}) == 304
    assert status(**{"If-None-Match": f'"x", W/{etag}'}) == 304  # a weak comparison
    assert status(**{"If-None-Match": "*"}) == 304
    assert status(**{"If-None-Match": '"other"'}) == 200
    assert status(**{"If-Modified-Since": modified}) == 304
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    earlier = email.utils.formatdate(time.time() - 3600 * 24 * 400, usegmt=True)
    assert status(**{"If-Modified-Since": later}) == 304  # nginx (exact by default): 200
    assert status(**{"If-Modified-Since": earlier}) == 200
    assert status(**{"If-Modified-Since": "not a date"}) == 200
    # If-None-Match decides when both are given (RFC 9110 §13.2.2).
    assert status(**{"If-None-Match": '"other"', "If-Modified-Since": modified}) == 200
    os.utime(site / "app.css", (time.time() + 5, time.time() + 5))  # changed: a new ETag
    assert status(**{"If-None-Match": etag}) == 200


def test_ranges(start_stack, site):
    """One range → 206, unsatisfiable → 416 (as nginx); several ranges → the whole file, 200
    (nginx answers multipart/byteranges: a choice, see static.py)."""
    data = (site / "data.bin").read_bytes()
    stack = start_stack(workers=1, args=mounts(mount(site)))

    def get(value: str, **more: str) -> object:
        return fetch(stack.port, "/static/data.bin", headers={"Range": value, **more})

    part = get("bytes=10-19")
    assert part.status == 206 and part.body == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert part.headers["content-length"] == "10"
    assert get("bytes=-5").body == data[-5:]
    assert get("bytes=4000-").body == data[4000:]
    assert get("bytes=4000-99999").headers["content-range"] == f"bytes 4000-4095/{len(data)}"
    for unsatisfiable in ("bytes=4096-", "bytes=5000-6000", "bytes=-0"):
        refused = get(unsatisfiable)
        assert refused.status == 416, unsatisfiable
        assert refused.headers["content-range"] == f"bytes */{len(data)}"
    for ignored in ("bytes=0-1,5-6", "bytes=abc", "lines=1-2", "bytes=9-3"):
        whole = get(ignored)
        assert whole.status == 200 and whole.body == data, ignored
    etag = part.headers["etag"]
    assert get("bytes=0-0", **{"If-Range": etag}).status == 206
    assert get("bytes=0-0", **{"If-Range": '"stale"'}).status == 200
    assert get("bytes=0-0", **{"If-Range": part.headers["last-modified"]}).status == 206
    head = fetch(stack.port, "/static/data.bin", method="HEAD", headers={"Range": "bytes=0-0"})
    assert head.status == 200 and head.body == b""


def test_precompressed_siblings_by_accept_encoding(start_stack, site):
    """As nginx's gzip_static (and brotli_static): NAME.br or NAME.gz for a client that
    accepts it, with the type of NAME and Vary: Accept-Encoding."""
    stack = start_stack(workers=1, args=mounts(mount(site), mount(site, "/plain/",
                                                                "no-precompressed")))

    def get(accept: str | None, path: str = "/static/app.js") -> object:
        return fetch(stack.port, path, headers={"Accept-Encoding": accept} if accept else {})

    gz = get("gzip, deflate")
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["vary"].lower() == "accept-encoding"
    assert gz.headers["content-type"] == "text/javascript; charset=utf-8"
    assert gzip.decompress(gz.body) == b"console.log('gzip');\n" * 50
    assert gz.headers["etag"] != get(None).headers["etag"]  # another file, another tag
    br = get("gzip, br")
    assert br.headers["content-encoding"] == "br" and br.body.startswith(b"brotli bytes")
    assert get("br;q=0, gzip").headers["content-encoding"] == "gzip"
    assert get("*").headers["content-encoding"] == "br"
    for plain in (get(None), get("identity"), get("gzip;q=0"),
                  get("gzip", "/plain/app.js"), get("gzip", "/static/app.css")):
        assert "content-encoding" not in plain.headers
        assert plain.body.startswith(b"console.log('plain')") or plain.body == CSS
    ranged = fetch(stack.port, "/static/app.js", headers={"Accept-Encoding": "gzip",
                                                          "Range": "bytes=0-1"})
    assert ranged.status == 206 and ranged.body == b"\x1f\x8b"  # the range of what is sent


def test_fallback_to_the_app(start_stack, site):
    """`fallback` (nginx's try_files $uri @app): what is not a file goes to the app; without
    it, 404 and, for other methods than GET and HEAD, 405 (as nginx)."""
    stack = start_stack(workers=1, args=mounts(
        mount(site, "/static/"), mount(site, "/files/", "fallback", "index=index.html")))
    assert fetch(stack.port, "/files/app.css").body == CSS
    for target in ("/files/missing.css", "/files/.env", "/files/empty/", "/files/a%2fb"):
        reply = fetch(stack.port, target)
        assert reply.status == 200 and reply.headers.get("x-pid"), target
    posted = fetch(stack.port, "/files/app.css", method="POST", body=b"x")
    assert posted.headers.get("x-pid")
    assert fetch(stack.port, "/static/missing.css").status == 404
    refused = fetch(stack.port, "/static/app.css", method="POST", body=b"x")
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
    assert fetch(stack.port, "/files/../x").status == 400  # never the app's either


def test_pipelined_static_and_app_requests_are_answered_in_order(start_stack, site, short_tmp):
    big = os.urandom(3 << 20)
    (site / "big.bin").write_bytes(big)
    stack = start_stack(workers=1, args=mounts(mount(site)))
    requests = b"".join(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % t for t in
                        (b"/static/app.css", b"/pid", b"/static/big.bin", b"/pid",
                         b"/static/nope", b"/static/app.css"))
    replies = pipeline(stack.port, requests, ["GET"] * 6, timeout=20)
    assert [r.status for r in replies] == [200, 200, 200, 200, 404, 200]
    assert replies[0].body == CSS == replies[5].body
    assert replies[2].body == big
    assert replies[1].header("x-pid") and replies[3].header("x-pid")


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1])


def test_a_large_file_to_a_slow_client_holds_neither_the_loop_nor_memory(start_stack, site):
    """The file goes out as the client takes it (sendfile while the socket takes it, then
    the transport's flow control): the balancer stays responsive and its memory flat."""
    big = os.urandom(64 << 20)
    (site / "big.bin").write_bytes(big)
    stack = start_stack(workers=1, args=mounts(mount(site)))
    before = _rss_kb(stack.balancer.pid)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = sock.recv(65536)
        for _ in range(10):  # a slow reader: others are served meanwhile, at once
            started = time.monotonic()
            assert fetch(stack.port, "/static/app.css").body == CSS
            assert time.monotonic() - started < 0.5
            received += sock.recv(65536)
            time.sleep(0.05)
        assert _rss_kb(stack.balancer.pid) - before < 16 << 10  # not the file: 64 MB
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"content-length: %d" % len(big) in head
        digest = hashlib.sha256(body)
        remaining = len(big) - len(body)
        while remaining:
            chunk = sock.recv(1 << 20)
            assert chunk
            digest.update(chunk)
            remaining -= len(chunk)
    assert digest.digest() == hashlib.sha256(big).digest()
    assert _rss_kb(stack.balancer.pid) - before < 16 << 10


def test_a_client_that_stops_reading_a_file_is_disconnected(start_stack, site):
    (site / "big.bin").write_bytes(os.urandom(32 << 20))
    stack = start_stack(workers=1, args=(*mounts(mount(site)), "--send-timeout", "1"))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(2.5)  # reads nothing
        total = 0
        try:
            while chunk := sock.recv(1 << 20):
                total += len(chunk)
        except ConnectionResetError:
            pass
    assert total < 32 << 20
    wait_for(lambda: "send timeout" in stack.balancer.output(), what="the send timeout")
    assert fetch(stack.port, "/static/app.css").body == CSS


def test_files_over_https(start_stack, site, short_tmp):
    """Under TLS no sendfile: pieces through the TLS transport, its flow control alike."""
    import ssl

    from ripsvc import tls

    big = os.urandom(5 << 20)
    (site / "big.bin").write_bytes(big)
    found = tls.resolve("", "", ["localhost"], short_tmp / "certs", mkcert=None)
    stack = start_stack(workers=1, args=(*mounts(mount(site)), "--tls-port", "{port}", "--cert",
                                         str(found.cert), "--key", str(found.key)))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", stack.port, context=context, timeout=20)
    assert request(conn, "GET", "/static/big.bin").body == big
    assert request(conn, "GET", "/static/app.css").body == CSS
    conn.close()


def test_a_missing_directory_is_reported_at_start(start_stack, short_tmp):
    stack = start_stack(workers=1, args=mounts(mount(short_tmp / "nowhere")))
    assert "is not a directory" in stack.balancer.wait_output("is not a directory")
    assert fetch(stack.port, "/static/x.css").status == 404


def test_rip_server_passes_its_mounts_and_compression_to_its_balancer(site, short_tmp):
    """The whole way: rip-server's flags → the manager → the balancer's command line."""
    from tests.support.server import Server

    hello = str(Path(__file__).parent.parent / "examples" / "hello")
    server = Server(short_tmp, hello, "w:1", "--static",
                    f"/static/={site};cache-control=public, max-age=60",
                    "--static", f"/files/={site}/sub;index=index.html", "--compression",
                    "--compression-min-size", "1")
    try:
        server.wait_healthy(1)
        css = fetch(server.port, "/static/app.css")
        assert css.body == CSS and css.headers["cache-control"] == "public, max-age=60"
        assert fetch(server.port, "/files/").body == b"<h1>sub</h1>\n"
        ping = fetch(server.port, "/ping", headers={"Accept-Encoding": "gzip"})
        assert ping.headers["content-encoding"] == "gzip"
        assert gzip.decompress(ping.body).startswith(b"pong")
    finally:
        server.close()
