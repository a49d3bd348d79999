"""The home page, the operator's logo and the load balancer's health check."""
from __future__ import annotations

import os

from flask import Blueprint, abort, current_app, redirect, render_template, send_from_directory, url_for
from flask_login import current_user

import extensions
from domain import directory

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return render_template("home/index.html", email=directory.user_email(current_user._get_current_object()))


@bp.get("/logo")
def logo():
    """The operator's PORTAL_LOGO, a file in instance/ (checked at start-up)."""
    name = current_app.config["PORTAL_LOGO"]
    if not name:
        abort(404, "This portal has no logo.")
    kind = {".svg": "image/svg+xml"}.get(os.path.splitext(name)[1].lower())
    response = send_from_directory(current_app.instance_path, name, mimetype=kind)
    # An SVG opened on its own must not run script on the portal's origin.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    return response


@bp.get("/healthz")
def healthz():
    """200 while the database answers, 503 otherwise."""
    ok = extensions.database_ok()
    return ({"status": "ok"}, 200) if ok else ({"status": "database unavailable"}, 503)
