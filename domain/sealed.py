"""The one door to encryption: every encrypted field, what its ciphertext is bound to (AES-GCM associated data),
and the sealing, opening and re-sealing that storing, reading, export and key rotation go through.

A new encrypted field is one entry in FIELDS (vault.py keeps the cryptography).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import vault
from domain.errors import StoredDataUnreadable
from models import ScimGroup, SessionUser, User

log = logging.getLogger(__name__)


# Whose row a field's ciphertext is bound to: a user's (a signed-in one as the session check read it), or a group's.
Owner = User | SessionUser | ScimGroup


def _same(value: Any) -> str | None:
    return value


def _scim_external_id(data: Any) -> str | None:
    value = data.get("externalId") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class SealedField:
    table: str  # the rows it lives in ("users": the user's row; "stored_profiles": their profile copy)
    column: str
    bound_to: Callable[[Owner], tuple[str, ...]]  # the associated data's parts, from the owning user (or group)
    json: bool = False  # a JSON value rather than bytes
    index: str | None = None  # a blind-index column kept in step (equality lookups)
    index_of: Callable[[Any], str | None] = _same  # what the index is of, from the stored value (None: no index)


FIELDS: dict[str, SealedField] = {
    "email": SealedField("users", "email_enc", lambda u: ("users", str(u.id), "email"), index="email_hmac"),
    "profile": SealedField("stored_profiles", "data_enc",
                           lambda u: ("stored_profiles", u.tenant_id or "", u.object_id or "", "profile"), json=True),
    "photo": SealedField("stored_profiles", "photo_enc",
                         lambda u: ("stored_profiles", u.tenant_id or "", u.object_id or "", "photo")),
    # What SCIM provisioning sent that the portal keeps (only while the organisation stores copies); bound to the
    # user's row id, so it survives linking at the first sign-in. The index is of externalId.
    "scim": SealedField("users", "scim_data_enc", lambda u: ("users", str(u.id), "scim"), json=True,
                        index="scim_external_id_hmac", index_of=_scim_external_id),
    # A provisioned group's displayName, looked up case-insensitively (SCIM's displayName is not case-exact).
    "group_name": SealedField("scim_groups", "name_enc", lambda g: ("scim_groups", str(g.id), "name"),
                              index="name_hmac", index_of=lambda name: name.casefold()),
}


def bound_to(field: str, user: Owner) -> bytes:
    """The associated data a field's ciphertext of `user` (or a group) is bound to."""
    return vault.aad(*FIELDS[field].bound_to(user))


def blind_index(field: str, value: Any) -> bytes | None:
    """The field's blind index of `value` under the newest key (None when the value has nothing to index)."""
    key = FIELDS[field].index_of(value)
    return vault.get_vault().blind_index(key) if key is not None else None


def blind_indexes(field: str, value: Any) -> list[bytes]:
    """The field's blind index of `value` under every configured key, newest first (look-ups)."""
    key = FIELDS[field].index_of(value)
    return vault.get_vault().blind_indexes(key) if key is not None else []


def seal(field: str, user: Owner, value: Any) -> bytes:
    v = vault.get_vault()
    if FIELDS[field].json:
        return v.encrypt_json(value, bound_to(field, user))
    return v.encrypt(value, bound_to(field, user))


def open_sealed(field: str, user: Owner, blob: bytes) -> Any:
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


def store(field: str, row: Any, user: Owner, value: Any) -> None:
    """Seal `value` into the field's column of `row` (and its blind index, if it has one)."""
    spec = FIELDS[field]
    if spec.index:
        setattr(row, spec.index, blind_index(field, value))
    setattr(row, spec.column, seal(field, user, value.encode() if spec.index and not spec.json else value))


def reseal_stale(table: str, row: Any, user: Owner) -> bool:
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
            value = field.index_of(json.loads(plaintext) if field.json else plaintext.decode())
            if value is not None:
                fresh[field.index] = v.blind_index(value)
    for column, value in fresh.items():  # only after every field of the row decrypted
        setattr(row, column, value)
    return bool(fresh)


def tables() -> list[str]:
    """The tables holding sealed fields, in the order of FIELDS."""
    return list(dict.fromkeys(f.table for f in FIELDS.values()))
