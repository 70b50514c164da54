"""A Flask app that streams, for the streaming tests.

/stream       → five pieces, 50 ms apart, from a generator
/fail-stream  → a generator that fails after its first piece
"""

import time

from flask import Flask, Response

app = Flask(__name__)


@app.route("/stream")
def stream():
    def pieces():
        for n in range(5):
            yield f"piece {n}\n"
            time.sleep(0.05)

    return Response(pieces(), mimetype="text/plain")


@app.route("/fail-stream")
def fail_stream():
    def pieces():
        yield "first piece\n"
        time.sleep(0.05)
        raise RuntimeError("this stream fails midway")

    return Response(pieces(), mimetype="text/plain")
