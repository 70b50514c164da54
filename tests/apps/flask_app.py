"""A Flask app for the WSGI conformance tests: what Werkzeug tells a view."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/seen")
def seen():
    return jsonify(host=request.host, url=request.url, server=request.environ["SERVER_NAME"],
                   port=request.environ["SERVER_PORT"], auth_user=request.headers.get("X-Auth-User"))
