"""The database stops answering, or cannot write: every page is the portal's own 503, and it recovers by itself."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from app import create_app
from helpers import ROOT, TEST_KEY, activate_sso, sign_out, sso_sign_in, start_sso, through_microsoft
from models import db

DOWN = b"The portal&#39;s database is not answering. Try again in a minute."


class Forwarder:
    """A TCP forwarder between the portal and PostgreSQL that the test can cut (the server 'stops') and restore."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.silent = False  # accept connections but never answer, like a host that drops packets
        self.restore()

    def restore(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break the open ones, as a stopped server does."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.silent:
                with self._lock:
                    self._conns.append(client)
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _assert_portal_503(resp) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.data[:300])
    assert DOWN in resp.data and b"Internal Server Error" not in resp.data
    assert resp.headers["Retry-After"] == "60"


@pytest.fixture
def outage(tmp_path, database_uri):
    """A demo portal whose PostgreSQL connection runs through a forwarder the test can cut."""
    if not database_uri:
        pytest.skip("stopping the database needs a database server: runs with TEST_DATABASE_URL (PostgreSQL)")
    url = sa.make_url(database_uri)
    forwarder = Forwarder((url.host, url.port or 5432))
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY],
              "SQLALCHEMY_DATABASE_URI": url.set(host="127.0.0.1", port=forwarder.port).render_as_string(False)}
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    from domain import directory, passwords
    with app.app_context():
        directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user("admin@northwind.example", "Northwind Traders", "correct horse battery staple",
                                   role="admin")
    yield app, forwarder
    forwarder.cut()
    with app.app_context():
        db.engine.dispose()


def test_database_stopped_then_back(outage, caplog):
    app, forwarder = outage
    admin = app.test_client()
    activate_sso(admin)  # the admin stays signed in through the outage
    member = app.test_client()
    sso_sign_in(member, "lena.fischer@northwind.example")
    sign_out(member)
    # A member who has finished Microsoft's pages: only the return to the portal is left.
    back = through_microsoft(member, start_sso(member, "lena.fischer@northwind.example"),
                             user="lena.fischer@northwind.example", follow_back=False)
    anonymous = app.test_client()
    form = anonymous.get("/login")

    caplog.set_level(logging.WARNING)
    # The database stops while the callback waits on Microsoft: its throttle was counted, so the limiter's header
    # hook would ask the database again while the error page is sent.
    emulator = app.extensions["entra_emulator"]
    emulator.faults["slow"] = {"login.microsoftonline.com/organizations/oauth2/v2.0/token": 1}
    threading.Timer(0.5, forwarder.cut).start()
    returned = member.get(back.headers["Location"])
    emulator.faults.clear()
    _assert_portal_503(returned)
    assert b"Start the sign-in again" in returned.data and "X-RateLimit-Limit" not in returned.headers
    for client, path in ((admin, "/"), (admin, "/profile/"), (admin, "/settings/security")):
        _assert_portal_503(client.get(path))
    assert anonymous.get("/login").status_code == 200  # a form that needs no database still shows
    # A sign-in attempt: the throttle's counter is the first thing that asks the database (and its header hook
    # would ask again while the error page is sent).
    token = form.data.decode().split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    _assert_portal_503(anonymous.post("/login", data={"email": "x@northwind.example", "csrf_token": token}))
    health = admin.get("/healthz")
    assert health.status_code == 503 and health.json == {"status": "database unavailable"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("Database not answering" in r.getMessage() for r in caplog.records)

    # A server that accepts and never answers: the connection attempt gives up after a few seconds.
    forwarder.restore()
    forwarder.silent = True
    started = time.monotonic()
    _assert_portal_503(admin.get("/profile/"))
    assert time.monotonic() - started < app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]["connect_timeout"] + 3

    forwarder.cut()
    forwarder.silent = False
    forwarder.restore()  # the same portal, not restarted
    assert admin.get("/healthz").status_code == 200
    page = admin.get("/profile/")
    assert page.status_code == 200 and b"Northwind" in admin.get("/settings/security").data
    assert sso_sign_in(member, "lena.fischer@northwind.example").status_code == 303
    assert b"Lena Fischer" in member.get("/profile/").data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_read_only_database_fails_the_health_check(app, tmp_path, database_uri):
    if database_uri:
        pytest.skip("a read-only SQLite file; PostgreSQL's writes are checked by the outage test")
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    assert app.test_client().get("/healthz").status_code == 200
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY], "SQLALCHEMY_DATABASE_URI": f"sqlite:///file:{path}?mode=ro&uri=true"}
    read_only = create_app(config, instance_path=app.instance_path)
    client = read_only.test_client()
    assert client.get("/login").status_code == 200  # reading still works...
    health = client.get("/healthz")  # ...but nothing can be stored
    assert health.status_code == 503 and health.json == {"status": "database unavailable"}
    form = client.get("/login").data.decode()
    token = form.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    _assert_portal_503(client.post("/login", data={"email": "x@northwind.example", "csrf_token": token}))
    with read_only.app_context():
        db.engine.dispose()


FULL_DISK = """
import json, os, resource, signal, sys
from app import create_app
from models import db
app = create_app(json.loads(os.environ["PORTAL_CONFIG"]), instance_path=os.environ["PORTAL_INSTANCE"])
client = app.test_client()
before = client.get("/healthz").status_code
with app.app_context(), db.engine.connect() as conn:
    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write must grow the log
# No file of this process may grow past 1 KB any more: a full disk, as SQLite sees it.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
print(json.dumps([before, client.get("/login").status_code, client.get("/healthz").status_code]), flush=True)
"""


def test_full_disk_fails_the_health_check(app, database_uri):
    if database_uri:
        pytest.skip("a full disk under SQLite; PostgreSQL's writes are checked by the outage test")
    config = {"DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY], "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]}
    env = dict(os.environ, PORTAL_CONFIG=json.dumps(config), PORTAL_INSTANCE=app.instance_path)
    done = subprocess.run([sys.executable, "-c", FULL_DISK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [200, 200, 503]  # reads answer, the health check sees no room to write
    assert "Traceback" not in done.stderr and "Health check: database unavailable" in done.stderr
