"""Time the audit log with many events: python -m bench.bench_audit [EVENTS] (not a test; about ten seconds).

Measures the SECURITY tab's first and last page (newest first, 25 a page, through the real route) and the
CLI's JSON-lines export, on a throw-away SQLite database.
"""
from __future__ import annotations

import sys
import tempfile
import time

import vault
from app import create_app
from domain import auditlog, directory, passwords
from models import AuditEvent, db, utcnow
from tests.helpers import PASSWORD, password_sign_in


def timed(fn, repeat: int = 5) -> float:
    """Best of `repeat` runs, in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "b" * 48,
                          "ENCRYPTION_KEYS": [vault.generate_key()]}, instance_path=tmp)
        with app.app_context():
            org = directory.create_organization("Northwind Traders", ["northwind.example"])
            admin = passwords.create_local_user("admin@northwind.example", org.name, PASSWORD, role="admin")
            now = utcnow()
            db.session.execute(db.insert(AuditEvent), [
                {"organization_id": org.id, "at": now, "actor_id": admin.id if i % 2 else None,
                 "action": "sign_in", "outcome": "failure" if i % 3 else "success", "detail": "bad_password",
                 "ip": "192.0.2.1"} for i in range(count)])
            db.session.commit()
        client = app.test_client()
        password_sign_in(client, "admin@northwind.example")
        pages = -(-(count + 1) // auditlog.AUDIT_PAGE_SIZE)
        assert client.get("/settings/security").status_code == 200

        runner = app.test_cli_runner()
        lines = []

        def export() -> None:
            result = runner.invoke(args=["audit", "--org", "Northwind Traders"])
            lines.append(result.output.count("\n"))

        first = timed(lambda: client.get("/settings/security"))
        last = timed(lambda: client.get(f"/settings/security?page={pages}"))
        whole = timed(export, repeat=2)
        assert lines[-1] == count + 1, lines
        print(f"{count} events, {pages} pages of {auditlog.AUDIT_PAGE_SIZE}")
        print(f"SECURITY tab, page 1          {first:8.1f} ms")
        print(f"SECURITY tab, page {pages:<10} {last:8.1f} ms")
        print(f"flask audit --org (all lines) {whole:8.1f} ms  ({whole * 1000 / (count + 1):.1f} µs a line)")


if __name__ == "__main__":
    main()
