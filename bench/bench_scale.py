"""Scale benchmarks (not tests): HTTP throughput under gunicorn, in-process sign-ins with their CPU split,
growth from 10 to 100,000 users, and peak memory per worker.

    .venv/bin/python -m bench.bench_scale                      # SQLite, sizes 10 and 100000
    .venv/bin/python -m bench.bench_scale --database-url postgresql+psycopg://USER@127.0.0.1:PORT/DB

Needs wrk (apt-get install wrk) and gunicorn (requirements-dev.txt). Everything runs on 127.0.0.1 in a
temporary instance folder (a fresh schema when --database-url is given); Microsoft is the emulator.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime

import requests
import sqlalchemy as sa

import vault as vault_module
from app import create_app
from bench.harness import EMULATOR, PORTAL_CATEGORIES, CpuSplit, Schema, free_port, peak_rss_mb, worker_pids, wrk
from models import AuditEvent, Domain, Organization, StoredProfile, User, db
from tests.helpers import activate_sso, sign_out, sso_sign_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEMBERS = ("lena.fischer@northwind.example", "omar.haddad@northwind.example", "jun.park@northwind.example")
FILLER_ID = 1_000_000  # seeded rows get ids far above the ones the portal assigns itself


# -- set-up -----------------------------------------------------------------------------------------

def seed(users: int, orgs: int) -> None:
    """Bulk-insert `users` SSO members across `orgs` organisations, each with an encrypted email and profile."""
    v = vault_module.get_vault()
    now = datetime.utcnow()
    org_rows = [{"id": FILLER_ID + i, "name": f"Bench Org {i}", "created_at": now, "tenant_id": str(uuid.uuid4()),
                 "sso_active": True, "store_profiles": True, "require_sso": False} for i in range(orgs)]
    db.session.execute(sa.insert(Organization.__table__), org_rows)
    db.session.execute(sa.insert(Domain.__table__), [{"name": f"org{i}.bench.example", "organization_id": FILLER_ID + i}
                                                     for i in range(orgs)])
    batch_users, batch_profiles, batch_events = [], [], []
    for n in range(users):
        org = org_rows[n % orgs]
        uid, oid = FILLER_ID + n, str(uuid.uuid4())
        email = f"user{n}@org{n % orgs}.bench.example"
        batch_users.append({"id": uid, "organization_id": org["id"], "role": "member", "break_glass": False,
                            "email_hmac": v.blind_index(email),
                            "email_enc": v.encrypt(email.encode(), vault_module.aad("users", str(uid), "email")),
                            "tenant_id": org["tenant_id"], "object_id": oid, "created_at": now, "last_sign_in_at": now})
        profile = {"displayName": f"Bench User {n}", "mail": email, "jobTitle": "Tester", "city": "Seattle"}
        batch_profiles.append({"user_id": uid, "read_at": now, "kept": True, "photo_enc": None, "session_id": None,
                               "data_enc": v.encrypt_json(profile, vault_module.aad(
                                   "stored_profiles", org["tenant_id"], oid, "profile"))})
        batch_events.append({"organization_id": org["id"], "at": now, "actor_id": uid, "action": "user_created",
                             "outcome": "success", "detail": "sso"})
        if len(batch_users) == 5000 or n == users - 1:
            for table, rows in ((User, batch_users), (StoredProfile, batch_profiles), (AuditEvent, batch_events)):
                db.session.execute(sa.insert(table.__table__), rows)
                rows.clear()
    db.session.commit()
    # A live database has planner statistics; a freshly bulk-loaded one has none until autovacuum runs.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))


def build(instance: str, port: int, database_uri: str | None, key: str):
    config = {"DEMO_MODE": True, "SERVER_NAME": f"127.0.0.1:{port}", "SECRET_KEY": "b" * 48, "ENCRYPTION_KEYS": [key]}
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    # The in-process sign-ins come each from its own address, so the per-IP limits count every request (that is
    # part of a sign-in's cost) and refuse none; Microsoft sign-ins do not count per account.
    return config, create_app(config, instance_path=instance)


# -- measurements -----------------------------------------------------------------------------------

class Size:
    """One database of `users` users with its own instance folder, app and port, set up for the measurements."""

    def __init__(self, users: int, orgs: int, args) -> None:
        self.users = users
        self.instance = tempfile.mkdtemp(prefix="portal-bench-")
        self.schema = Schema(args.database_url) if args.database_url else None
        database_uri = self.schema.uri if self.schema else None
        self.port = free_port()
        self.config, self.app = build(self.instance, self.port, database_uri, vault_module.generate_key())
        with self.app.app_context():
            t0 = time.perf_counter()
            seed(users, orgs)
            print(f"  seeded {users} users in {orgs} organisations in {time.perf_counter() - t0:.1f} s", flush=True)
            from domain import directory, passwords
            from tests.helpers import PASSWORD
            directory.create_organization("Northwind Traders", ["northwind.example"])
            passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        admin = self.app.test_client()
        assert activate_sso(admin).status_code == 303
        sign_out(admin)
        browser = self.app.test_client()
        assert sso_sign_in(browser, MEMBERS[0]).status_code == 303
        # The first page after sign-in shows (and drops from the cookie) the "Signed in" message: wrk replays the
        # cookie a browser holds for every page after that one, not a first page over and over.
        assert browser.get("/profile/").status_code == 200
        cookie_name = self.app.config["SESSION_COOKIE_NAME"]
        self.cookie = f"{cookie_name}={browser.get_cookie(cookie_name, domain='127.0.0.1').value}"
        for email in MEMBERS:  # first sign-ins (user creation, consent) are not what we time
            assert sso_sign_in(self.app.test_client(), email).status_code == 303
        self.cpu: dict[str, float] = defaultdict(float)
        self.signed_in, self.wall = 0, 0.0
        self.rates: dict[str, list[float]] = defaultdict(list)
        self.master: subprocess.Popen | None = None

    def sign_in_batch(self, split: CpuSplit, count: int) -> None:
        """`count` complete sign-ins through the emulator in this process, their CPU charged by part."""
        split.reset()
        start = time.perf_counter()
        for i in range(count):
            browser = self.app.test_client()
            # Each sign-in from its own address, as people sign in: the per-IP limits count as in real use
            # (loopback addresses: a demo app answers no other computer).
            browser.environ_base["REMOTE_ADDR"] = str(ipaddress.IPv4Address("127.1.0.1") + self.signed_in + i)
            resp = sso_sign_in(browser, MEMBERS[i % len(MEMBERS)])
            assert resp.status_code == 303, resp.data[:300]
        self.wall += time.perf_counter() - start
        split._tick()  # charge the last stretch before reading the totals
        for category, seconds in split.totals.items():
            self.cpu[category] += seconds
        self.signed_in += count

    def start_server(self, workers: int) -> None:
        """gunicorn with this size's configuration (throttles on), once the in-process app let go of the database."""
        with self.app.app_context():
            db.engine.dispose()
        env = dict(os.environ, BENCH_INSTANCE=self.instance)
        env.update({f"FLASK_{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in self.config.items()})
        self.master = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{self.port}", "--log-level",
             "warning", "bench.bench_wsgi:create_bench_app()"],
            env=env, cwd=ROOT)

    def wait_until_serving(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                if requests.get(base + "/healthz", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # workers still starting
                pass
            time.sleep(0.1)
        page = requests.get(base + "/profile/", headers={"Cookie": self.cookie}, allow_redirects=False, timeout=10)
        assert page.status_code == 200 and b"Lena Fischer" in page.content, "the benchmark cookie is not signed in"

    def targets(self) -> dict[str, tuple[str, str | None]]:
        base = f"http://127.0.0.1:{self.port}"
        return {"bare": (base + "/_bare/", None), "page": (base + "/_bench/page", None),
                "signed_in": (base + "/_bench/signed-in", self.cookie), "login": (base + "/login", None),
                "profile": (base + "/profile/", self.cookie)}

    def result(self) -> dict:
        http = {name: statistics.median(values) for name, values in self.rates.items()}
        http["rss_mb"] = [peak_rss_mb(pid) for pid in worker_pids(self.master.pid)]
        return {"sign_in": {"per_second": self.signed_in / self.wall,
                            "cpu_ms": {k: v / self.signed_in * 1000 for k, v in self.cpu.items()}},
                "http": http}

    def close(self) -> None:
        if self.master is not None:
            self.master.terminate()
            self.master.wait(timeout=30)
        shutil.rmtree(self.instance, ignore_errors=True)
        if self.schema is not None:
            self.schema.drop()


def measure(sizes: list[Size], args) -> dict[int, dict]:
    """Every figure in rounds that alternate between the sizes, so drift on a shared machine hits them alike."""
    split = CpuSplit()
    split.install()
    for size in sizes:
        split.charge_emulator_pages(size.app)
    batch = max(1, args.sign_ins // args.rounds)
    for _ in range(args.rounds):
        for size in sizes:
            size.sign_in_batch(split, batch)
    for size in sizes:
        size.start_server(args.workers)
    for size in sizes:
        size.wait_until_serving()
    for _ in range(args.rounds):
        for size in sizes:
            for name, (url, cookie) in size.targets().items():
                size.rates[name].append(wrk(url, args.seconds, args.connections, cookie))
    return {size.users: size.result() for size in sizes}


def report(results: dict[int, dict]) -> None:
    sizes = sorted(results)
    print()
    head = "figure".ljust(44) + "".join(f"{s:>12,} users" for s in sizes)
    if len(sizes) == 2:
        head += "   worse by"
    print(head)
    print("-" * len(head))

    def row(label: str, values: list[float], fmt: str, higher_is_better: bool) -> None:
        line = label.ljust(44) + "".join(f"{format(v, fmt):>18}" for v in values)
        if len(values) == 2 and min(values) > 0:
            worse = values[0] / values[1] if higher_is_better else values[1] / values[0]
            line += f"   {worse:8.2f}x"
        print(line)

    h = [results[s]["http"] for s in sizes]
    row("bare Flask route, requests/s", [x["bare"] for x in h], ".0f", True)
    row("  same template in the portal, no session", [x["page"] for x in h], ".0f", True)
    row("  same, signed in (cookie + session check)", [x["signed_in"] for x in h], ".0f", True)
    row("login prompt, requests/s", [x["login"] for x in h], ".0f", True)
    row("/profile (signed in, decrypting), requests/s", [x["profile"] for x in h], ".0f", True)
    row("  /profile ÷ bare route (target ≥ 0.6)", [x["profile"] / x["bare"] for x in h], ".2f", True)
    row("  login prompt ÷ bare route", [x["login"] / x["bare"] for x in h], ".2f", True)
    row("  portal page, no session ÷ bare route", [x["page"] / x["bare"] for x in h], ".2f", True)
    row("  signed-in page ÷ bare route", [x["signed_in"] / x["bare"] for x in h], ".2f", True)
    row("peak RSS per worker, MB (largest)", [max(x["rss_mb"]) for x in h], ".1f", False)
    s = [results[n]["sign_in"] for n in sizes]
    row("complete sign-ins/s (in-process, emulator)", [x["per_second"] for x in s], ".1f", True)
    portal = [sum(x["cpu_ms"].get(c, 0) for c in PORTAL_CATEGORIES) for x in s]
    row("portal CPU per sign-in, ms", portal, ".2f", False)
    for category in PORTAL_CATEGORIES:
        row(f"  {category}", [x["cpu_ms"].get(category, 0) for x in s], ".2f", False)
    row(f"{EMULATOR} CPU per sign-in, ms", [x["cpu_ms"].get(EMULATOR, 0) for x in s], ".2f", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100000", help="users per run, comma-separated (default 10,100000)")
    parser.add_argument("--orgs", type=int, default=1000, help="organisations for the larger sizes (default 1000)")
    parser.add_argument("--database-url", help="a PostgreSQL URL; default: SQLite in the instance folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers (default: CPUs)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per endpoint and round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the sizes; medians (default 3)")
    parser.add_argument("--sign-ins", type=int, default=150, help="timed in-process sign-ins per size (default 150)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    sizes: list[Size] = []
    try:
        for users in (int(s) for s in args.sizes.split(",")):
            orgs = args.orgs if users >= args.orgs else 1
            print(f"== {users:,} users in {orgs:,} organisations ({args.database_url or 'SQLite'})", flush=True)
            sizes.append(Size(users, orgs, args))
        report(measure(sizes, args))
    finally:
        for size in sizes:
            size.close()


if __name__ == "__main__":
    main()
