"""Encryption keys: the start-up check that the configured keys read what is stored, and key rotation."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import vault
from domain import sealed
from models import ScimGroup, StoredProfile, User, VaultCheck, db

log = logging.getLogger(__name__)


def check_vault() -> None:
    """Refuse keys that cannot read what is stored; store a check value on first use."""
    v = vault.get_vault()
    row = db.session.get(VaultCheck, 1)
    if row is None:
        db.session.add(VaultCheck(id=1, value=v.check_value()))
        db.session.commit()
    else:
        v.verify_check_value(row.value)


@dataclass
class RotationCount:
    reencrypted: int = 0
    current: int = 0
    unreadable: int = 0


# How each table of sealed fields is read for rotation: the query (primary key last), the key, (row, owner).
_ROWS = {
    "users": (lambda: db.select(User, User.id), User.id, lambda row: (row.User, row.User)),
    "stored_profiles": (lambda: db.select(StoredProfile, User, StoredProfile.user_id)
                        .join(User, User.id == StoredProfile.user_id), StoredProfile.user_id,
                        lambda row: (row.StoredProfile, row.User)),
    "scim_groups": (lambda: db.select(ScimGroup, ScimGroup.id), ScimGroup.id,
                    lambda row: (row.ScimGroup, row.ScimGroup)),
}


def rotation_total() -> int:
    """How many rows `rotate_keys` looks at (for a progress bar)."""
    return sum(db.session.scalar(db.select(db.func.count()).select_from(m)) or 0
               for m in (User, StoredProfile, ScimGroup, VaultCheck))


def rotate_keys(batch_size: int = 200, progress: Callable[[int], None] | None = None) -> dict[str, RotationCount]:
    """Re-encrypt every sealed field under the newest key, committing a batch at a time.

    Rows already under the newest key are skipped, so an interrupted run can simply be started again.
    A row that cannot be decrypted is left unchanged and counted; the key check value moves to the
    newest key last and only when every row could be read, so start-up keeps refusing a key ring
    that lacks a key still in use.
    """
    v = vault.get_vault()
    report = {table: RotationCount() for table in sealed.tables()}
    report["vault_check"] = RotationCount()
    step = progress or (lambda n: None)

    def batches(query: Any, key: Any):
        last = None
        while True:
            q = query if last is None else query.where(key > last)
            rows = list(db.session.execute(q.order_by(key).limit(batch_size)).all())
            if not rows:
                return
            yield rows
            last = rows[-1][-1]

    for table in sealed.tables():
        # Keyset pagination on the primary key (the last column), so committed batches never shift.
        query, key, owned = _ROWS[table]
        for rows in batches(query(), key):
            for row in rows:
                try:
                    outcome = "reencrypted" if sealed.reseal_stale(table, *owned(row)) else "current"
                except vault.DecryptError as e:
                    log.error("Key rotation: %s row %s cannot be decrypted and was left unchanged: %s",
                              table, row[-1], e)
                    outcome = "unreadable"
                setattr(report[table], outcome, getattr(report[table], outcome) + 1)
            db.session.commit()
            step(len(rows))
    check = db.session.get(VaultCheck, 1)
    if check is not None:
        unreadable = sum(c.unreadable for c in report.values())
        if v.is_current(check.value):
            report["vault_check"].current += 1
        elif unreadable:
            pass  # left under the old key: start-up keeps demanding it while data needs it
        else:
            v.verify_check_value(check.value)
            check.value = v.check_value()
            report["vault_check"].reencrypted += 1
            db.session.commit()
        step(1)
    log.info("Key rotation to %s: %s", v.current_key_id,
             {t: (c.reencrypted, c.current, c.unreadable) for t, c in report.items()})
    return report
