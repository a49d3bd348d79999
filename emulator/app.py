"""The emulator's Flask app: its own secret key and cookie, the protocol endpoints, the pages and Graph."""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from . import admin, graph, pages, protocol
from .transport import GRAPH_PREFIX

if TYPE_CHECKING:
    from . import Emulator


def create_app(emu: "Emulator") -> Flask:
    """Build the emulator's own Flask app (own secret key and session cookie)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    browser = urlsplit(emu.browser_url)
    app.config.update(
        SECRET_KEY=emu.secret_key,
        SESSION_COOKIE_NAME="entra_emulator_session",
        # Scope the cookie to where the browser sees us, so it never reaches the portal.
        SESSION_COOKIE_PATH=browser.path or "/",
        SESSION_COOKIE_SECURE=browser.scheme == "https",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=emu.max_content_length,
    )
    app.json.sort_keys = False  # Graph clients may rely on Graph's property order
    app.extensions["entra_emulator"] = emu
    app.jinja_env.globals["csrf_token"] = pages.csrf_token
    for module in (protocol, pages, admin, graph):
        app.register_blueprint(module.bp)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _http_error(e: HTTPException):
    """Unknown paths and wrong methods: Graph answers in JSON, the sign-in host with a page in its own look."""
    if request.path.startswith(GRAPH_PREFIX + "/"):
        return jsonify(error={"code": e.name.replace(" ", ""), "message": e.description}), e.code
    return render_template("http_error.html", status=e.code, title=e.name), e.code


def _security_headers(response: Response) -> Response:
    """The browser pages get the same protections as the portal's (no inline script, no framing)."""
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action *")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers["Cache-Control"] = "no-store"
    return response
