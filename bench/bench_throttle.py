"""What counting the sign-in throttles costs: python -m bench.bench_throttle [--database-url URL] [--requests N]

Not a test. Times `POST /login` for an unknown domain (the cheapest throttled request: no password hash, no
Microsoft) in-process, with the counters in memory (per process) and in the database (every worker together),
on SQLite in a temporary folder or in a fresh schema of the PostgreSQL database given.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from app import create_app
from bench.bench_scale import Schema
from models import db
from tests.helpers import TEST_KEY, csrf


def time_login_posts(storage: str, database_url: str | None, requests: int) -> float:
    """Milliseconds per throttled POST /login with the counters in `storage`."""
    config = {"DEMO_MODE": True, "SECRET_KEY": "b" * 48, "ENCRYPTION_KEYS": [TEST_KEY],
              "RATELIMIT_STORAGE_URI": storage,
              # Far above what the run sends: every request is counted, none refused.
              "RATELIMIT_SIGN_IN_PER_IP": "1000000 per minute", "RATELIMIT_SIGN_IN_PER_ACCOUNT": "1000000 per minute"}
    schema = Schema(database_url) if database_url else None
    if schema:
        config["SQLALCHEMY_DATABASE_URI"] = schema.uri
    try:
        app = create_app(config, instance_path=tempfile.mkdtemp(prefix="portal-bench-"))
        client = app.test_client()
        token = csrf(client)

        def post():
            resp = client.post("/login", data={"email": "someone@unknown.example", "csrf_token": token})
            assert resp.status_code == 200, resp.status_code

        for _ in range(50):  # warm-up
            post()
        start = time.perf_counter()
        for _ in range(requests):
            post()
        elapsed = time.perf_counter() - start
        with app.app_context():
            db.engine.dispose()
        return elapsed / requests * 1000
    finally:
        if schema is not None:
            schema.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL URL; default: SQLite in a temporary folder")
    parser.add_argument("--requests", type=int, default=500, help="timed requests per storage (default 500)")
    args = parser.parse_args()
    print(f"POST /login, ms per request ({args.database_url or 'SQLite'})")
    for storage in ("memory://", "portal-database://"):
        print(f"  counters in {storage:22s} {time_login_posts(storage, args.database_url, args.requests):6.2f}")


if __name__ == "__main__":
    main()
