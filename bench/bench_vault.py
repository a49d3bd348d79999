"""Time the vault's hot paths: python -m bench.bench_vault (not a test; runs in a few seconds)."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Callable

from vault import Vault, aad, generate_key

PROFILE = {
    "id": "3f0b6a4e-9a51-4c1e-8d0a-5b7e2c9f1a23",
    "displayName": "Zoë Katharina Müller-Lüdenscheidt",
    "givenName": "Zoë Katharina",
    "surname": "Müller-Lüdenscheidt",
    "userPrincipalName": "zoe.mueller@contoso.onmicrosoft.com",
    "mail": "zoe.mueller@contoso.example",
    "jobTitle": "Senior Procurement Specialist, EMEA",
    "department": "Procurement & Vendor Management",
    "officeLocation": "Berlin HQ, Building C, 4th floor, Room 4.217",
    "companyName": "Contoso Deutschland GmbH",
    "mobilePhone": "+49 151 23456789",
    "businessPhone": "+49 30 1234567-890",
    "preferredLanguage": "de-DE",
    "streetAddress": "Friedrichstraße 123",
    "city": "Berlin",
}
PHOTO = os.urandom(20 * 1024)


def per_op_us(fn: Callable[[], object], budget_s: float = 1.5) -> tuple[float, int]:
    """Return (microseconds per call, calls) measured over roughly budget_s seconds."""
    fn()  # warm up (first-call allocations, lazy imports)
    n, start = 0, time.perf_counter()
    batch = 100
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / n * 1e6, n
        batch = min(batch * 2, 20_000)


def main() -> None:
    vault = Vault([base64.urlsafe_b64decode(generate_key()) for _ in range(3)])
    row = aad("users", "72f988bf-86f1-41af-91ab-2d7cd011db47", PROFILE["id"], "profile")
    photo_row = aad("users", "72f988bf-86f1-41af-91ab-2d7cd011db47", PROFILE["id"], "photo")
    profile_json = json.dumps(PROFILE, separators=(",", ":"), ensure_ascii=False).encode()
    profile_blob = vault.encrypt_json(PROFILE, row)
    photo_blob = vault.encrypt(PHOTO, photo_row)
    assert vault.decrypt_json(profile_blob, row) == PROFILE
    assert vault.decrypt(photo_blob, photo_row) == PHOTO

    cases: list[tuple[str, Callable[[], object]]] = [
        ("encrypt_json profile", lambda: vault.encrypt_json(PROFILE, row)),
        ("decrypt_json profile", lambda: vault.decrypt_json(profile_blob, row)),
        ("encrypt_json+decrypt_json", lambda: vault.decrypt_json(vault.encrypt_json(PROFILE, row), row)),
        ("encrypt photo 20 kB", lambda: vault.encrypt(PHOTO, photo_row)),
        ("decrypt photo 20 kB", lambda: vault.decrypt(photo_blob, photo_row)),
        ("blind_index email", lambda: vault.blind_index("zoe.mueller@contoso.example")),
        ("blind_indexes (3 keys)", lambda: vault.blind_indexes("zoe.mueller@contoso.example")),
        ("aad(4 parts)", lambda: aad("users", "tid", PROFILE["id"], "profile")),
    ]
    print(f"profile JSON {len(profile_json)} B -> blob {len(profile_blob)} B; "
          f"photo {len(PHOTO)} B -> blob {len(photo_blob)} B")
    print(f"{'operation':<28} {'µs/op':>10} {'ops':>10}")
    print("-" * 50)
    for name, fn in cases:
        us, n = per_op_us(fn)
        print(f"{name:<28} {us:>10.2f} {n:>10}")


if __name__ == "__main__":
    main()
