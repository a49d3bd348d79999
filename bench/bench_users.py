"""Time the USERS tab with many users: python -m bench.bench_users [USERS] (not a test; about ten seconds).

Measures the USERS tab's first and last page (newest sign-in first, 25 a page, through the real route, names and
emails decrypted for the page's rows) and Find by email, with USERS users (10,000) in one organisation, each with an
encrypted email and profile copy, on a throw-away SQLite database.
"""
from __future__ import annotations

import sys
import tempfile
from datetime import timedelta

import vault
from app import create_app
from bench.bench_audit import timed
from domain import directory, members, passwords, sealed
from models import StoredProfile, User, db, utcnow
from tests.helpers import PASSWORD, password_sign_in


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "b" * 48,
                          "ENCRYPTION_KEYS": [vault.generate_key()]}, instance_path=tmp)
        with app.app_context():
            org = directory.create_organization("Northwind Traders", ["northwind.example"])
            passwords.create_local_user("admin@northwind.example", org.name, PASSWORD, role="admin")
            v, now = vault.get_vault(), utcnow()
            users = [User(organization=org, role="member", tenant_id="t", object_id=f"oid-{i}",
                          email_hmac=v.blind_index(f"user{i}@northwind.example"), email_enc=b"",
                          last_sign_in_at=None if i % 10 == 0 else now - timedelta(minutes=i))
                     for i in range(count - 1)]
            db.session.add_all(users)
            db.session.flush()
            for i, user in enumerate(users):
                user.email_enc = sealed.seal("email", user, f"user{i}@northwind.example".encode())
                db.session.add(StoredProfile(user_id=user.id, data_enc=sealed.seal(
                    "profile", user, {"displayName": f"User {i}", "userPrincipalName": f"user{i}@northwind.example"})))
            db.session.commit()
            db.session.execute(db.text("ANALYZE"))
        client = app.test_client()
        password_sign_in(client, "admin@northwind.example")
        pages = -(-count // members.USERS_PAGE_SIZE)
        assert client.get(f"/settings/users?page={pages}").status_code == 200
        found = client.get("/settings/users?email=user4321@northwind.example")
        assert found.status_code == 200 and b"User 4321" in found.data

        first = timed(lambda: client.get("/settings/users"), repeat=10)
        last = timed(lambda: client.get(f"/settings/users?page={pages}"), repeat=10)
        find = timed(lambda: client.get("/settings/users?email=user4321@northwind.example"), repeat=10)
        print(f"{count} users in one organisation, {pages} pages of {members.USERS_PAGE_SIZE}")
        print(f"USERS tab, page 1            {first:8.1f} ms")
        print(f"USERS tab, page {pages:<12} {last:8.1f} ms")
        print(f"USERS tab, Find by email     {find:8.1f} ms")


if __name__ == "__main__":
    main()
