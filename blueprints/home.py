"""The home page and the load balancer's health check."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for
from flask_login import current_user

import accounts

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return render_template("home/index.html", email=accounts.user_email(current_user))


@bp.get("/healthz")
def healthz():
    """200 while the database answers, 503 otherwise."""
    ok = accounts.database_ok()
    return ({"status": "ok"}, 200) if ok else ({"status": "database unavailable"}, 503)
