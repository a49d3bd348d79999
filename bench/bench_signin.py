"""The portal's CPU per SSO sign-in alone, in-process, split by part and by request: python -m bench.bench_signin

The sign-in half of bench_peer.py (the same emulator over HTTPS, the same portal set-up and browser, the same split),
without the peer, gunicorn or wrk, so before/after runs of one change take seconds and can alternate:

    .venv/bin/python -m bench.bench_signin [--rounds 5] [--sign-ins 20] [--statements] [--profile FILE]

Prints the CPU per sign-in of each round (thread CPU while the app handles a request), the split by part of the
cheapest round, the CPU of each request, and with --statements the SQL statements, commits and transactions of one
sign-in (SQLAlchemy's engine events). --profile writes a cProfile of the app's requests, timed in thread CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

import requests
from sqlalchemy import event

from bench.bench_peer import BROWSER, NOT_COUNTED, Portal, start_emulator
from bench.harness import PORTAL_CATEGORIES, CpuSplit, free_port
from models import db


def _count_statements(portal: Portal) -> Counter:
    counted: Counter = Counter()
    with portal.app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: counted.update([" ".join(statement.split())[:90]]))
    event.listen(engine, "commit", lambda conn: counted.update(["COMMIT"]))
    event.listen(engine, "begin", lambda conn: counted.update(["(a transaction begins)"]))
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="the portal's PostgreSQL; default: SQLite in a temporary folder")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--sign-ins", type=int, default=20, help="sign-ins per round (default 20)")
    parser.add_argument("--statements", action="store_true", help="count the SQL of one sign-in")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile (thread CPU) of the app's requests")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="portal-signin-bench-")
    portal_port = free_port()
    emulator, url, ca = start_emulator(folder, [f"https://127.0.0.1:{portal_port}/auth/callback",
                                                f"https://127.0.0.1:{portal_port}/auth/admin-consent/callback"])
    portal = None
    try:
        portal = Portal(portal_port, url, ca, args.database_url)
        split = CpuSplit(outside=BROWSER)
        split.install()
        split.charge_app(portal.app)
        profile = cProfile.Profile(time.thread_time) if args.profile else None
        per_request: dict[str, Counter] = defaultdict(Counter)
        requests_seen: Counter = Counter()
        inner = portal.app.wsgi_app

        def measured(environ, start_response):
            split._tick()
            before = dict(split.totals)
            if profile:
                profile.enable()
            try:
                return inner(environ, start_response)
            finally:
                if profile:
                    profile.disable()
                split._tick()
                name = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
                requests_seen[name] += 1
                for category, seconds in split.totals.items():
                    per_request[name][category] += seconds - before.get(category, 0.0)

        portal.app.wsgi_app = measured
        portal.sign_in_batch(split, 5)  # warm
        per_request.clear()
        requests_seen.clear()
        statements = _count_statements(portal) if args.statements else None
        rounds = []
        for _ in range(args.rounds):
            portal.cpu.clear()
            portal.timed = 0
            portal.sign_in_batch(split, args.sign_ins)
            total = sum(v for k, v in portal.cpu.items() if k not in NOT_COUNTED) / portal.timed * 1000
            rounds.append((total, {c: portal.cpu.get(c, 0.0) / portal.timed * 1000 for c in PORTAL_CATEGORIES}))
        totals = [total for total, _ in rounds]
        print("CPU per sign-in by round, ms: " + " ".join(f"{t:.2f}" for t in totals)
              + f"; min {min(totals):.2f}, median {statistics.median(totals):.2f}")
        print("by part (cheapest round), ms: "
              + ", ".join(f"{c} {v:.2f}" for c, v in min(rounds, key=lambda r: r[0])[1].items()))
        print("by request, ms:")
        for name, parts in per_request.items():
            n = requests_seen[name]
            own = {c: v for c, v in parts.items() if c not in NOT_COUNTED and v > 0}
            print(f"  {name:<28}{sum(own.values()) / n * 1000:7.2f}  ("
                  + ", ".join(f"{c} {v / n * 1000:.2f}" for c, v in own.items()) + ")")
        if statements is not None:
            n = args.rounds * args.sign_ins
            print(f"SQL per sign-in: {sum(v for k, v in statements.items() if not k.startswith('(')) / n:.2f} "
                  f"statements and commits, {statements['(a transaction begins)'] / n:.2f} transactions")
            for statement, count in statements.most_common():
                print(f"  {count / n:5.2f}  {statement}")
        if profile:
            profile.dump_stats(args.profile)
    finally:
        if portal is not None:
            portal.close()
        emulator.terminate()
        emulator.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
