"""User provisioning (SCIM) through the portal's real endpoint, in-process: python -m bench.bench_scim (not a test).

1. An initial cycle: the emulator, as Entra's provisioning service, provisions USERS users (10,000) in GROUPS groups
   (20; the groups are assigned to the app, every user is in one of them) to the portal's /scim/v2/, through the
   portal's whole WSGI stack (demo.py's in-process wiring): a look-up by userName and a POST per user, then per
   group a look-up, a POST and one PATCH adding its hundreds of members. Reported: requests per second over the
   whole cycle (the emulator's side included: it builds every body and parses every answer) and inside the portal
   alone (wall and CPU time spent in its WSGI app).
2. A filter look-up's growth: `GET /Users?filter=userName eq "..."` for a provisioned user, in an organisation of
   100 users and one of 10,000 (two portals, one database each), in rounds that alternate between them; each
   round's median CPU time per look-up (time.thread_time: the machine is shared), then the median over rounds.

Options: --users, --groups, --rounds, --lookups (per size and round), --database-url (PostgreSQL; a schema each).
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time

import vault
from app import create_app
from bench.harness import Schema
from domain import directory, passwords, provisioning
from domain.policy import OPERATOR
from emulator.transport import WSGIAdapter
from models import User, db
from tests.helpers import NORTHWIND_TID as NW
from tests.helpers import PASSWORD, activate_sso

PORTAL = "http://portal.test"
SCIM_LIMIT = "1000000 per minute"  # the endpoint's own limit, raised: one client sends the whole cycle


class Timed:
    """A WSGI app wrapped to add up the wall and CPU time (this thread's) spent inside it."""

    def __init__(self, app) -> None:
        self.app, self.calls, self.wall, self.cpu = app, 0, 0.0, 0.0

    def __call__(self, environ, start_response):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return list(self.app(environ, start_response))  # the body too: werkzeug may produce it lazily
        finally:
            self.calls += 1
            self.wall += time.perf_counter() - wall
            self.cpu += time.thread_time() - cpu


def portal(folder: str, database_url: str | None):
    """A demo-mode portal with Northwind, SSO active (through the emulator) and a provisioning token."""
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "b" * 48,
              "ENCRYPTION_KEYS": [vault.generate_key()], "RATELIMIT_SCIM": SCIM_LIMIT}
    if database_url:
        config["SQLALCHEMY_DATABASE_URI"] = database_url
    app = create_app(config, instance_path=folder)
    with app.app_context():
        directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
    assert activate_sso(app.test_client()).status_code == 303
    with app.app_context():
        token = provisioning.generate_token(directory.get_organization("Northwind Traders"), OPERATOR)
    emu = app.extensions["entra_emulator"]
    emu.configure_provisioning(NW, tenant_url=PORTAL + "/scim/v2", token=token)
    return app, emu, token


def populate(emu, users: int, groups: int) -> list[str]:
    """USERS generated members in GROUPS groups (round robin), the groups assigned to the app; their UPNs."""
    staff = emu.add_users(NW, users)
    teams = [emu.add_group(NW, f"Team {g + 1:02d}", [u.oid for u in staff[g::groups]]) for g in range(groups)]
    emu.set_tenant(NW, assigned=[t.id for t in teams])
    return [u.upn for u in staff]


def dispose(app) -> None:
    with app.app_context():
        db.engine.dispose()


def cycle(app, emu) -> tuple[dict, Timed, float]:
    """One provisioning cycle with the portal's time measured; (summary, the portal's timer, wall seconds)."""
    timed = Timed(app)
    emu.provisioning_session.mount(PORTAL + "/", WSGIAdapter(timed))
    started = time.perf_counter()
    summary = emu.provision(NW)
    elapsed = time.perf_counter() - started
    emu.provisioning_session.mount(PORTAL + "/", WSGIAdapter(app))
    assert not summary["errors"], summary["errors"][:5]
    return summary, timed, elapsed


def lookup_cpu(client, token: str, upns: list[str], count: int) -> float:
    """The median CPU time (ms, this thread) of `count` userName look-ups of random provisioned users."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/scim+json"}
    times = []
    for upn in random.choices(upns, k=count):
        cpu = time.thread_time()
        resp = client.get("/scim/v2/Users", query_string={"filter": f'userName eq "{upn}"'}, headers=headers)
        times.append(time.thread_time() - cpu)
        assert resp.status_code == 200 and resp.json["totalResults"] == 1, (resp.status_code, resp.data[:200])
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000, help="users of the initial cycle (default 10000)")
    parser.add_argument("--groups", type=int, default=20, help="groups of the initial cycle (default 20)")
    parser.add_argument("--small", type=int, default=100, help="users of the smaller organisation (default 100)")
    parser.add_argument("--rounds", type=int, default=7, help="look-up rounds alternating the sizes (default 7)")
    parser.add_argument("--lookups", type=int, default=200, help="look-ups per size and round (default 200)")
    parser.add_argument("--database-url", help="a PostgreSQL URL; default: SQLite in a temporary folder")
    args = parser.parse_args()
    random.seed(16)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        urls = {}
        for size in (args.small, args.users):
            if args.database_url:
                schema = Schema(args.database_url)
                cleanup.callback(schema.drop)
                urls[size] = schema.uri
            else:
                urls[size] = None
        apps = {}
        for size in (args.small, args.users):
            app, emu, token = portal(f"{tmp}/{size}", urls[size])
            cleanup.callback(dispose, app)
            upns = populate(emu, size, args.groups if size == args.users else max(1, args.groups * size // args.users))
            summary, timed, elapsed = cycle(app, emu)
            with app.app_context():
                assert db.session.scalar(db.select(db.func.count()).select_from(User).where(
                    User.scim_id.is_not(None))) == size
                if urls[size] is None:
                    db.session.execute(db.text("ANALYZE"))
                    db.session.commit()
            apps[size] = (app, token, upns)
            if size == args.users:
                requests = summary["requests"]
                print(f"initial cycle: {size} users, {args.groups} groups "
                      f"({summary['users']['created']} users and {summary['groups']['created']} groups created), "
                      f"{requests} requests")
                print(f"  whole cycle (emulator included)   {elapsed:8.1f} s   {requests / elapsed:8.0f} requests/s")
                print(f"  inside the portal, wall           {timed.wall:8.1f} s   {timed.calls / timed.wall:8.0f} "
                      f"requests/s")
                print(f"  inside the portal, CPU            {timed.cpu:8.1f} s   {timed.calls / timed.cpu:8.0f} "
                      f"requests/s")

        rounds: dict[int, list[float]] = {size: [] for size in apps}
        clients = {size: app.test_client() for size, (app, _, _) in apps.items()}
        for size, (app, token, upns) in apps.items():
            lookup_cpu(clients[size], token, upns, 20)  # warm up
        for _ in range(args.rounds):
            for size, (app, token, upns) in apps.items():
                rounds[size].append(lookup_cpu(clients[size], token, upns, args.lookups))
        small, large = (statistics.median(rounds[s]) for s in (args.small, args.users))
        print(f"filter userName eq, CPU per look-up (median of {args.rounds} rounds of {args.lookups})")
        for size in (args.small, args.users):
            print(f"  {size:6d} users   {statistics.median(rounds[size]):6.2f} ms   rounds: "
                  + " ".join(f"{r:.2f}" for r in rounds[size]))
        print(f"  growth {args.small} -> {args.users}: {large / small:.2f}x")


if __name__ == "__main__":
    main()
