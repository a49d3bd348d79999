"""The WSGI app gunicorn serves in bench_scale.py: the portal, plus a bare Flask route under /_bare/.

gunicorn "bench.bench_wsgi:create_bench_app()" (from the repository root); configuration comes from FLASK_*
variables and BENCH_INSTANCE (the instance folder). The bare route is the yardstick: a template rendered
by Flask with no session, database or decryption, served by the same workers in the same run.

Two more routes render the same template inside the portal, to show where a page's time goes:
/_bench/page (the portal's hooks and template context, no session) and /_bench/signed-in (that, plus the
session cookie and the server-side session check every signed-in page makes).
"""
from __future__ import annotations

import os

from flask import Blueprint, Flask, render_template
from flask_login import login_required
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from app import create_app

FIELDS = [(f"Field {i}", f"value number {i} of the bare page") for i in range(12)]
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def create_bench_app():
    portal = create_app(instance_path=os.environ["BENCH_INSTANCE"])
    steps = Blueprint("bench", __name__, url_prefix="/_bench", template_folder=TEMPLATES)

    @steps.get("/page")
    def page_in_portal():
        return render_template("bare.html", fields=FIELDS)

    @steps.get("/signed-in")
    @login_required
    def signed_in_page():
        return render_template("bare.html", fields=FIELDS)

    portal.register_blueprint(steps)
    bare = Flask("bare", template_folder=TEMPLATES)

    @bare.get("/")
    def page():
        return render_template("bare.html", fields=FIELDS)

    portal.wsgi_app = DispatcherMiddleware(portal.wsgi_app, {"/_bare": bare.wsgi_app})
    return portal
