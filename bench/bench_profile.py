"""Time a profile write and read through the portal's services: python -m bench.bench_profile

Not a test. It builds a demo-mode portal in a temporary folder, signs nobody in, and times
profiles.store_profile (+ commit) and profiles.profile_of against the same steps without encryption,
so the difference is what encryption costs per profile write and read.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import Callable

import entra
import vault
from app import create_app
from domain import directory, profiles, sealed
from models import StoredProfile, User, db

PROFILE = {
    "id": "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02", "displayName": "Lena Fischer", "givenName": "Lena",
    "surname": "Fischer", "jobTitle": "Sales Manager", "companyName": "Northwind Traders", "department": "Sales",
    "businessPhones": ["+1 555 0102"], "mobilePhone": "+1 555 0112", "officeLocation": "HQ 3.01",
    "preferredLanguage": "en-US", "mail": "lena.fischer@northwind.example",
    "userPrincipalName": "lena.fischer@northwind.example", "streetAddress": "12 Harbour Road", "city": "Seattle",
    "state": "WA", "postalCode": "98101", "country": "United States",
}
PHOTO = b"\x89PNG\r\n\x1a\n" + os.urandom(20 * 1024)  # a 20 kB "photo"
TID = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"


def per_op_us(fn: Callable[[], object], seconds: float = 1.5) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DEMO_MODE": True, "SECRET_KEY": "b" * 48, "ENCRYPTION_KEYS": [vault.generate_key()]},
                         instance_path=os.path.join(tmp, "instance"))
        with app.app_context():
            db.create_all()
            directory.create_organization("Northwind Traders", ["northwind.example"])
            org = directory.get_organization("Northwind Traders")
            user = User(organization=org, role="member", tenant_id=TID, object_id=PROFILE["id"],
                        email_hmac=b"", email_enc=b"", password_hash="x")  # a password account: email untouched
            db.session.add(user)
            db.session.commit()
            result = entra.SignIn(claims={"tid": TID, "oid": PROFILE["id"]}, profile=PROFILE, photo=PHOTO,
                                  photo_type="image/png")
            v = vault.get_vault()
            aad = sealed.bound_to("profile", user)
            photo_aad = sealed.bound_to("photo", user)

            def write():
                profiles.store_profile(user, result, None)
                db.session.commit()

            def read():
                db.session.expire_all()  # read from the database, not the identity map
                profiles.profile_of(user)
                profiles.photo_of(user)

            counter = iter(range(10**9))

            def write_plain():  # the same row write with the plaintext: the baseline
                n = next(counter).to_bytes(8, "big")  # new bytes each time, or SQLAlchemy skips the UPDATE
                row = db.session.get(StoredProfile, user.id)
                row.data_enc = json.dumps(PROFILE).encode() + n
                row.photo_enc = PHOTO + n
                row.read_at = datetime.now(timezone.utc).replace(tzinfo=None)
                db.session.commit()

            def read_plain():
                db.session.expire_all()
                row = db.session.get(StoredProfile, user.id)
                _ = row.data_enc, row.photo_enc

            rows = [
                ("store_profile + commit (encrypted)", per_op_us(write)),
                ("profile_of + photo_of (decrypt)", per_op_us(read)),
                ("same row write, plaintext", per_op_us(write_plain)),
                ("same row read, plaintext", per_op_us(read_plain)),
                ("encrypt profile + photo only", per_op_us(lambda: (v.encrypt_json(PROFILE, aad),
                                                                    v.encrypt(PHOTO, photo_aad)))),
                ("decrypt profile + photo only", per_op_us(lambda b=v.encrypt_json(PROFILE, aad),
                                                           p=v.encrypt(PHOTO, photo_aad):
                                                           (v.decrypt_json(b, aad), v.decrypt(p, photo_aad)))),
            ]
    print(f"profile {len(json.dumps(PROFILE))} B JSON, photo {len(PHOTO)} B")
    print(f"{'operation':<38} {'µs/op':>10}")
    print("-" * 49)
    for name, us in rows:
        print(f"{name:<38} {us:>10.1f}")


if __name__ == "__main__":
    main()
