"""The peer of bench_peer.py: a minimal Flask app that signs in with Microsoft's `identity` library.

Written the way the library's documentation shows: `identity.flask.Auth` with an authority, client id, secret and
redirect URI, Flask-Session keeping sessions in the filesystem, and one page behind `@auth.login_required`. It is
served by gunicorn (`--pythonpath bench "peer_identity:create_app()"`) with its settings in PEER_* variables.
"""
from __future__ import annotations

import os

from flask import Flask, render_template
from identity.flask import Auth


def create_app() -> Flask:
    app = Flask(__name__, template_folder="peer_templates")
    app.config.update(SESSION_TYPE="filesystem", SESSION_FILE_DIR=os.environ["PEER_SESSION_DIR"])
    auth = Auth(
        None,
        authority=os.environ["PEER_AUTHORITY"],
        client_id=os.environ["PEER_CLIENT_ID"],
        client_credential=os.environ["PEER_CLIENT_SECRET"],
        redirect_uri=os.environ["PEER_REDIRECT_URI"],
    )
    auth.init_app(app)

    @app.route("/")
    @auth.login_required
    def index(*, context):
        return render_template("index.html", user=context["user"])

    return app
