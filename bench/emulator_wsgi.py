"""The emulator as bench_peer.py serves it: `python -m emulator`'s app under gunicorn, which keeps connections alive
as Microsoft's endpoints do (werkzeug's server, which `python -m emulator` uses, closes every connection).

gunicorn --certfile CERT --keyfile KEY "bench.emulator_wsgi:create_app()" with its settings in BENCH_EMULATOR_*.
"""
from __future__ import annotations

import json
import os

from emulator import Emulator


def create_app():
    url = os.environ["BENCH_EMULATOR_URL"]
    emu = Emulator(os.environ["BENCH_EMULATOR_INSTANCE"], browser_url=url, login_url=url, graph_url=url + "/graph",
                   clients={os.environ["BENCH_EMULATOR_CLIENT_ID"]: {
                       "secret": os.environ["BENCH_EMULATOR_CLIENT_SECRET"],
                       "redirect_uris": json.loads(os.environ["BENCH_EMULATOR_REDIRECT_URIS"]),
                       "name": "Customer Portal (staging)", "front_channel_logout_url": None}})
    return emu.wsgi
