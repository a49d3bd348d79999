"""The one door to encryption: every encrypted field, what its ciphertext is bound to (AES-GCM associated data),
and the sealing, opening and re-sealing that storing, reading, export and key rotation go through.

A new encrypted field is one entry in FIELDS (vault.py keeps the cryptography).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import vault
from domain.errors import StoredDataUnreadable
from models import User

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedField:
    table: str  # the rows it lives in ("users": the user's row; "stored_profiles": their profile copy)
    column: str
    bound_to: Callable[[User], tuple[str, ...]]  # the associated data's parts, from the owning user
    json: bool = False  # a JSON value rather than bytes
    index: str | None = None  # a blind-index column kept in step (equality lookups)


FIELDS: dict[str, SealedField] = {
    "email": SealedField("users", "email_enc", lambda u: ("users", str(u.id), "email"), index="email_hmac"),
    "profile": SealedField("stored_profiles", "data_enc",
                           lambda u: ("stored_profiles", u.tenant_id or "", u.object_id or "", "profile"), json=True),
    "photo": SealedField("stored_profiles", "photo_enc",
                         lambda u: ("stored_profiles", u.tenant_id or "", u.object_id or "", "photo")),
}


def bound_to(field: str, user: User) -> bytes:
    """The associated data a field's ciphertext of `user` is bound to."""
    return vault.aad(*FIELDS[field].bound_to(user))


def seal(field: str, user: User, value: Any) -> bytes:
    v = vault.get_vault()
    if FIELDS[field].json:
        return v.encrypt_json(value, bound_to(field, user))
    return v.encrypt(value, bound_to(field, user))


def open_sealed(field: str, user: User, blob: bytes) -> Any:
    """Decrypt a user's field; a failure is logged (key id only) and shown as a page, the row is left alone."""
    v = vault.get_vault()
    try:
        if FIELDS[field].json:
            return v.decrypt_json(blob, bound_to(field, user))
        return v.decrypt(blob, bound_to(field, user))
    except vault.DecryptError as e:
        log.error("Stored %s of user %s cannot be decrypted: %s", field, user.id, e)
        raise StoredDataUnreadable(
            "Part of what the portal stores about you cannot be decrypted, so it cannot be shown. "
            "It was left unchanged for the portal's operator to look at.",
            hint="Your administrator can check the encryption keys. You can also delete your stored copy "
                 "(Profile → Delete my stored copy); a new one is read at your next Microsoft sign-in.") from None


def store(field: str, row: Any, user: User, value: Any) -> None:
    """Seal `value` into the field's column of `row` (and its blind index, if it has one)."""
    spec = FIELDS[field]
    if spec.index:
        setattr(row, spec.index, vault.get_vault().blind_index(value))
    setattr(row, spec.column, seal(field, user, value.encode() if spec.index else value))


def reseal_stale(table: str, row: Any, user: User) -> bool:
    """Re-encrypt under the newest key every field of `row` (a row of `table`) that is not; False if none was.

    Raises vault.DecryptError, changing nothing, when any of the row's fields cannot be read."""
    v = vault.get_vault()
    fresh: dict[str, bytes] = {}
    for field in (f for f in FIELDS.values() if f.table == table):
        blob = getattr(row, field.column)
        if not blob or v.is_current(blob):
            continue
        aad = vault.aad(*field.bound_to(user))
        plaintext = v.decrypt(blob, aad)
        fresh[field.column] = v.encrypt(plaintext, aad)
        if field.index:
            fresh[field.index] = v.blind_index(plaintext.decode())
    for column, value in fresh.items():  # only after every field of the row decrypted
        setattr(row, column, value)
    return bool(fresh)


def tables() -> list[str]:
    """The tables holding sealed fields, in the order of FIELDS."""
    return list(dict.fromkeys(f.table for f in FIELDS.values()))
