"""A slow Microsoft: a callback gives up at one deadline, and other pages keep answering meanwhile."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import requests

from domain import directory, passwords
from app import create_app
from helpers import (PASSWORD, ROOT, TEST_KEY, activate_sso, free_port, password_sign_in, readme_gunicorn, sign_out,
                     start_sso, through_microsoft)
from models import db

TOKEN = "login.microsoftonline.com/organizations/oauth2/v2.0/token"
LENA = "lena.fischer@northwind.example"


def _demo_app(instance_path: str, database_uri: str | None, server_name: str, **extra):
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": server_name, "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY], **extra}
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    app = create_app(config, instance_path=instance_path)
    with app.app_context():
        directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
    return app


def test_a_callback_gives_up_at_one_deadline(tmp_path, database_uri):
    # Each call alone would fit in ENTRA_TIMEOUT (2 s < 3 s); the token and /me together do not.
    app = _demo_app(str(tmp_path / "instance"), database_uri, "portal.test", ENTRA_TIMEOUT=3)
    client = app.test_client()
    activate_sso(client)
    sign_out(client)
    back = through_microsoft(client, start_sso(client, LENA), user=LENA, follow_back=False)
    app.extensions["entra_emulator"].faults["slow"] = {TOKEN: 2, "graph.microsoft.com/v1.0/me": 2}
    started = time.monotonic()
    page = client.get(back.headers["Location"])
    took = time.monotonic() - started
    assert page.status_code == 504 and b"Microsoft is not answering" in page.data
    assert 2.9 < took < 3.8, took
    assert client.get("/profile/").status_code == 302  # not signed in
    with app.app_context():
        db.engine.dispose()


class Http:
    """A requests.Session in the test client's dialect (get/post, `.data`, no redirects), for the helpers."""

    def __init__(self, base: str):
        self.base, self.session = base, requests.Session()

    def _send(self, method, path, **kwargs):
        url = path if path.startswith("http") else self.base + path
        resp = self.session.request(method, url, allow_redirects=False, timeout=60, **kwargs)
        resp.data = resp.content
        return resp

    def get(self, path, query_string=None, follow_redirects=False):
        return self._send("GET", path, params=query_string)

    def post(self, path, data=None, follow_redirects=False):
        return self._send("POST", path, data=data)


# The gunicorn workers' emulator answers the token endpoint after 60 s (cut at the portal's timeout).
SLOW_TOKEN_HOOK = f"""
def post_worker_init(worker):
    worker.wsgi.extensions["entra_emulator"].faults["slow"] = {{{TOKEN!r}: 60}}
    print("worker ready", worker.pid, flush=True)
"""


def test_pages_answer_while_twenty_sign_ins_wait_on_a_slow_token_endpoint(tmp_path, database_uri):
    port, timeout = free_port(), 4
    base = f"http://127.0.0.1:{port}"
    instance = str(tmp_path / "instance")
    setup = _demo_app(instance, database_uri, f"127.0.0.1:{port}")
    activate_sso(setup.test_client())  # the tenant is bound and the emulator's consent kept, for every worker
    uri = setup.config["SQLALCHEMY_DATABASE_URI"]
    with setup.app_context():
        db.engine.dispose()
    hook = tmp_path / "slow_token.py"
    hook.write_text(SLOW_TOKEN_HOOK)
    env = dict(os.environ, FLASK_DEMO_MODE="1", FLASK_SECRET_KEY="t" * 48, FLASK_ENCRYPTION_KEYS=json.dumps([TEST_KEY]),
               FLASK_SERVER_NAME=f"127.0.0.1:{port}", FLASK_SQLALCHEMY_DATABASE_URI=uri,
               FLASK_ENTRA_TIMEOUT=str(timeout),
               # 20 sign-ins of one account from one address, each counted twice: under the limits
               FLASK_RATELIMIT_SIGN_IN_PER_ACCOUNT="100 per minute", FLASK_RATELIMIT_SIGN_IN_PER_IP="200 per minute")
    command = readme_gunicorn(port, instance_path=instance)
    workers = int(command[command.index("--workers") + 1])
    log = open(tmp_path / "gunicorn.log", "w+")
    server = subprocess.Popen(command + ["-c", str(hook)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while open(log.name).read().count("worker ready") < workers:
            assert server.poll() is None and time.monotonic() < deadline, open(log.name).read()
            time.sleep(0.2)

        admin = Http(base)
        password_sign_in(admin, "admin@northwind.example")
        assert admin.get("/profile/").status_code == 200
        callbacks = []
        for _ in range(20):  # each browser has been through Microsoft's pages and comes back with a code
            browser = Http(base)
            state = parse_qs(urlsplit(start_sso(browser, LENA).headers["Location"]).query)["state"][0]
            callbacks.append((browser, f"/auth/callback?code=from-microsoft&state={state}"))

        results: list[tuple[float, float, requests.Response]] = []

        def come_back(browser, path):
            started = time.monotonic()
            resp = browser.get(path)
            results.append((started, time.monotonic(), resp))

        threads = [threading.Thread(target=come_back, args=c) for c in callbacks]
        for t in threads:
            t.start()
        time.sleep(1)  # all 20 are waiting on the token endpoint now
        page_times = []
        for path in ("/profile/", "/", "/settings/security", "/profile/", "/healthz"):
            started = time.monotonic()
            assert admin.get(path).status_code == 200, path
            page_times.append((started, time.monotonic()))
        for t in threads:
            t.join(timeout=60)

        assert len(results) == 20
        assert all(end - start < 1 for start, end in page_times), page_times
        first_answer = min(end for _, end, _ in results)
        assert page_times[-1][1] < first_answer  # the pages answered while every sign-in was still waiting
        for start, end, resp in results:
            assert resp.status_code == 504 and b"Microsoft is not answering" in resp.data
            assert timeout - 0.1 < end - start < timeout + 2, end - start
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
