"""What the benchmarks share: the per-category CPU split of a sign-in, wrk, free ports, PostgreSQL schemas, RSS.

Imported by bench_scale.py and bench_peer.py (run as modules from the repository root: python -m bench.NAME).
"""
from __future__ import annotations

import functools
import re
import socket
import subprocess
import time
import uuid
from collections import defaultdict

import msal
import sqlalchemy as sa
from sqlalchemy.orm import Session

import entra
import throttles
import vault as vault_module
from emulator.transport import EmulatorAdapter

PORTAL_CATEGORIES = ("MSAL", "token validation", "Graph", "encryption", "database", "sign-in throttles",
                     "Flask, templates, other")
EMULATOR = "emulator (Microsoft's side)"


# -- CPU time split ---------------------------------------------------------------------------------

class CpuSplit:
    """Charge this thread's CPU time to the innermost wrapped category (exclusive time, no double counting)."""

    def __init__(self, outside: str = "Flask, templates, other") -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack = [outside]  # what the thread's time counts as when no wrapped call runs
        self.last = time.thread_time()

    def _tick(self) -> None:
        now = time.thread_time()
        self.totals[self.stack[-1]] += now - self.last
        self.last = now

    def reset(self) -> None:
        self._tick()
        self.totals.clear()

    def wrap(self, owner, name: str, category: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def charged(*args, **kwargs):
            self._tick()
            self.stack.append(category)
            try:
                return original(*args, **kwargs)
            finally:
                self._tick()
                self.stack.pop()

        setattr(owner, name, charged)

    def install(self) -> None:
        """Wrap the classes once; every app in this process is measured through them."""
        for name in ("initiate_auth_code_flow", "acquire_token_by_auth_code_flow"):
            self.wrap(msal.ClientApplication, name, "MSAL")  # the public and the confidential client
        self.wrap(entra.EntraClient, "validate_id_token", "token validation")
        self.wrap(entra.EntraClient, "read_profile", "Graph")
        for name in ("encrypt", "decrypt", "encrypt_json", "decrypt_json", "blind_index", "blind_indexes"):
            self.wrap(vault_module.Vault, name, "encryption")
        for name in ("execute", "scalar", "scalars", "get", "flush", "commit", "rollback", "refresh"):
            self.wrap(Session, name, "database")
        for name in ("acquire_entry", "get_moving_window"):
            self.wrap(throttles.DatabaseStorage, name, "sign-in throttles")
        self.wrap(EmulatorAdapter, "send", EMULATOR)

    def _charged(self, inner, category: str):
        def charged(environ, start_response):
            self._tick()
            self.stack.append(category)
            try:
                return list(inner(environ, start_response))
            finally:
                self._tick()
                self.stack.pop()

        return charged

    def charge_app(self, app, category: str = "Flask, templates, other") -> None:
        """Charge everything one app does for a request to `category` unless a wrapped call inside claims it."""
        app.wsgi_app = self._charged(app.wsgi_app, category)

    def charge_emulator_pages(self, app) -> None:
        """The emulator's browser pages of one app count as Microsoft's side too."""
        self.charge_app(app.extensions["entra_emulator"].wsgi, EMULATOR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Schema:
    """A fresh schema in the PostgreSQL database at `url`, and the URL that puts the portal's tables in it."""

    def __init__(self, url: str) -> None:
        self.server = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.name = "bench_" + uuid.uuid4().hex[:12]
        with self.server.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.name}"))
        self.uri = sa.make_url(url).update_query_dict(
            {"options": f"-csearch_path={self.name}"}).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.server.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.name} CASCADE"))
        self.server.dispose()


def wrk(url: str, seconds: int, connections: int, cookie: str | None) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    if cookie:
        cmd[1:1] = ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"{url}: {bad.group(1)} error responses\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(p) for p in f.read().split()]


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


