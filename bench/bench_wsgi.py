"""The WSGI app gunicorn serves in bench_scale.py: the portal, plus a bare Flask route under /_bare/.

gunicorn --pythonpath REPO,REPO/bench "bench_wsgi:create_bench_app()"; configuration comes from FLASK_*
variables and BENCH_INSTANCE (the instance folder). The bare route is the yardstick: a template rendered
by Flask with no session, database or decryption, served by the same workers in the same run.
"""
from __future__ import annotations

import os

from flask import Flask, render_template
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from app import create_app

FIELDS = [(f"Field {i}", f"value number {i} of the bare page") for i in range(12)]


def create_bench_app():
    portal = create_app(instance_path=os.environ["BENCH_INSTANCE"])
    bare = Flask("bare", template_folder=os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates"))

    @bare.get("/")
    def page():
        return render_template("bare.html", fields=FIELDS)

    portal.wsgi_app = DispatcherMiddleware(portal.wsgi_app, {"/_bare": bare.wsgi_app})
    return portal
