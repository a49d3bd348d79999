"""Stateless workers: two real portal processes on one database and instance folder, behind one name."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from helpers import ROOT, TEST_KEY, activate_sso, free_port, sign_out, sso_sign_in, start_sso, through_microsoft

SERVE = """
import json, os, sys
from werkzeug.serving import make_server
from app import create_app
app = create_app(json.loads(os.environ["PORTAL_CONFIG"]), instance_path=os.environ["PORTAL_INSTANCE"])
server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True)
print("serving", flush=True)
server.serve_forever()
"""


class Browser:
    """A requests.Session behind a load balancer that keeps the public Host and picks the instance per request.

    It speaks the test client's dialect (get/post, `.data`, no redirects followed), so the helpers drive it.
    """

    def __init__(self, public: str, ports: list[int]):
        self.http = requests.Session()
        self.public = public
        self.route(ports)
        self.served_by: list[int] = []

    def route(self, ports: list[int]) -> None:
        """Send the next requests to these instances in turn."""
        self._ports = itertools.cycle(ports)

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        parts = urlsplit(url)
        port = next(self._ports)
        target = urlunsplit(("http", f"127.0.0.1:{port}", parts.path or "/", parts.query, ""))
        resp = self.http.request(method, target, headers={"Host": self.public}, allow_redirects=False,
                                 timeout=30, **kwargs)
        resp.data = resp.content
        self.served_by.append(port)
        return resp

    def get(self, url: str, query_string=None, follow_redirects: bool = False) -> requests.Response:
        return self._send("GET", url, params=query_string)

    def post(self, url: str, data=None, follow_redirects: bool = False) -> requests.Response:
        return self._send("POST", url, data=data)


@pytest.fixture
def instances(app, northwind, database_uri):
    """Two portal processes sharing the test's database, secrets and instance folder (schema made by `app`)."""
    ports = [free_port(), free_port()]
    public = f"127.0.0.1:{ports[0]}"
    config = {"DEMO_MODE": True, "SERVER_NAME": public, "SECRET_KEY": app.config["SECRET_KEY"],
              "ENCRYPTION_KEYS": [TEST_KEY], "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]}
    env = dict(os.environ, PORTAL_CONFIG=json.dumps(config), PORTAL_INSTANCE=app.instance_path)
    procs = [subprocess.Popen([sys.executable, "-c", SERVE, str(port)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE) for port in ports]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "serving", "an instance did not start"
        yield public, ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_sign_in_started_on_one_instance_completes_on_the_other(instances):
    public, (a, b) = instances
    admin = Browser(public, [a, b])  # every request to the other instance: password, settings, Microsoft, callback
    assert activate_sso(admin).headers["Location"].endswith("/settings/security")
    assert b"Active" in admin.get("/settings/security").data
    assert sign_out(admin).status_code == 303
    assert set(admin.served_by) == {a, b}

    lena = Browser(public, [a])
    back = through_microsoft(lena, start_sso(lena, "lena.fischer@northwind.example"),
                             user="lena.fischer@northwind.example", follow_back=False)
    lena.route([b])  # instance A started the flow and its emulator issued the code; B redeems it
    done = lena.get(back.headers["Location"])
    assert done.status_code == 303, done.data[:500]
    for port in (a, b):
        lena.route([port])
        page = lena.get("/profile/")
        assert page.status_code == 200 and b"Lena Fischer" in page.data


def test_round_robin_member_sign_in_and_sign_out(instances):
    public, ports = instances
    admin = Browser(public, ports)
    activate_sso(admin)
    member = Browser(public, ports[::-1])
    assert sso_sign_in(member, "omar.haddad@northwind.example").status_code == 303
    assert b"Omar Haddad" in member.get("/profile/").data and b"Omar Haddad" in member.get("/profile/").data
    sign_out(member)
    assert all(member.get("/profile/").status_code == 302 for _ in ports)  # signed out on every instance
