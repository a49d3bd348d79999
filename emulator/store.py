"""SQLite state shared by every process that uses the same instance folder."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kid TEXT UNIQUE NOT NULL,
    private_pem TEXT NOT NULL, cert_pem TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS auth_codes (
    code TEXT PRIMARY KEY, data TEXT NOT NULL, expires REAL NOT NULL,
    redeemed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token TEXT PRIMARY KEY, data TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS consents (
    tid TEXT NOT NULL, oid TEXT NOT NULL, client_id TEXT NOT NULL, scopes TEXT NOT NULL,
    PRIMARY KEY (tid, oid, client_id));
CREATE TABLE IF NOT EXISTS admin_consents (
    tid TEXT NOT NULL, client_id TEXT NOT NULL, granted REAL NOT NULL,
    PRIMARY KEY (tid, client_id));
CREATE TABLE IF NOT EXISTS tenant_settings (
    tid TEXT PRIMARY KEY, users_may_consent INTEGER, assignment_required INTEGER,
    assigned TEXT);
CREATE TABLE IF NOT EXISTS app_role_assignments (
    tid TEXT NOT NULL, client_id TEXT NOT NULL, principal_id TEXT NOT NULL, role TEXT NOT NULL,
    PRIMARY KEY (tid, client_id, principal_id, role));
CREATE TABLE IF NOT EXISTS user_states (oid TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_members (gid TEXT PRIMARY KEY, members TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS provisioning (
    tid TEXT PRIMARY KEY, tenant_url TEXT, token TEXT, scope TEXT, external_id TEXT, last_cycle TEXT);
CREATE TABLE IF NOT EXISTS provisioned (
    tid TEXT NOT NULL, kind TEXT NOT NULL, oid TEXT NOT NULL, scim_id TEXT NOT NULL, members TEXT,
    PRIMARY KEY (tid, kind, oid));
"""


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL once. The switch takes an exclusive lock that SQLite's busy timeout does not wait
    for, so workers starting together retry it for a while (once it is WAL, reading the mode needs no lock)."""
    deadline = time.monotonic() + 30
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    """Short transactions on one SQLite file; one connection per thread."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._local = threading.local()
        # executescript manages its own transaction; CREATE ... IF NOT EXISTS is idempotent.
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves so each unit is explicit.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            _use_wal(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """Run a write transaction; BEGIN IMMEDIATE serialises writers across processes."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, args).fetchall()

    # -- meta ---------------------------------------------------------------
    def get_or_set_meta(self, name: str, make) -> str:
        """Return the stored value, creating it once (first writer wins)."""
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
            if row:
                return row["value"]
            value = make()
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))
            return value

    # -- signing keys ---------------------------------------------------------
    def signing_keys(self) -> list[sqlite3.Row]:
        """All keys, newest first (the first one is current)."""
        return self.query("SELECT kid, private_pem, cert_pem FROM signing_keys ORDER BY seq DESC")

    def add_signing_key(self, kid: str, private_pem: str, cert_pem: str, now: float,
                        only_if_empty: bool = False) -> bool:
        with self.tx() as db:
            if only_if_empty and db.execute("SELECT 1 FROM signing_keys").fetchone():
                return False
            db.execute("INSERT INTO signing_keys (kid, private_pem, cert_pem, created) "
                       "VALUES (?, ?, ?, ?)", (kid, private_pem, cert_pem, now))
            return True

    # -- authorization codes ------------------------------------------------
    def add_code(self, code: str, data: dict, expires: float) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO auth_codes (code, data, expires) VALUES (?, ?, ?)",
                       (code, json.dumps(data), expires))

    def redeem_code(self, code: str, now: float) -> tuple[str, dict | None]:
        """Consume a code atomically: ("ok"|"unknown"|"expired"|"redeemed", data)."""
        with self.tx() as db:
            row = db.execute("SELECT data, expires, redeemed FROM auth_codes WHERE code=?",
                             (code,)).fetchone()
            if row is None:
                return "unknown", None
            # Mark it used whatever happens next: a code is good for one attempt only.
            db.execute("UPDATE auth_codes SET redeemed=1 WHERE code=?", (code,))
            if row["expires"] < now:
                return "expired", None
            if row["redeemed"]:
                return "redeemed", None
            return "ok", json.loads(row["data"])

    # -- refresh tokens -------------------------------------------------------
    def add_refresh_token(self, token: str, data: dict, expires: float) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO refresh_tokens (token, data, expires) VALUES (?, ?, ?)",
                       (token, json.dumps(data), expires))

    def take_refresh_token(self, token: str, now: float) -> dict | None:
        """Use a refresh token once (rotation, like Entra's for confidential clients)."""
        with self.tx() as db:
            row = db.execute("DELETE FROM refresh_tokens WHERE token=? RETURNING data, expires",
                             (token,)).fetchone()
        if row is None or row["expires"] < now:
            return None
        return json.loads(row["data"])

    # -- consents -------------------------------------------------------------
    def user_consent(self, tid: str, oid: str, client_id: str) -> set[str]:
        rows = self.query("SELECT scopes FROM consents WHERE tid=? AND oid=? AND client_id=?",
                          (tid, oid, client_id))
        return set(rows[0]["scopes"].split()) if rows else set()

    def add_user_consent(self, tid: str, oid: str, client_id: str, scopes: set[str]) -> None:
        with self.tx() as db:
            row = db.execute("SELECT scopes FROM consents WHERE tid=? AND oid=? AND client_id=?",
                             (tid, oid, client_id)).fetchone()
            merged = set(scopes) | (set(row["scopes"].split()) if row else set())
            db.execute("INSERT OR REPLACE INTO consents (tid, oid, client_id, scopes) "
                       "VALUES (?, ?, ?, ?)", (tid, oid, client_id, " ".join(sorted(merged))))

    def has_admin_consent(self, tid: str, client_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM admin_consents WHERE tid=? AND client_id=?",
                               (tid, client_id)))

    def add_admin_consent(self, tid: str, client_id: str, now: float) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO admin_consents (tid, client_id, granted) "
                       "VALUES (?, ?, ?)", (tid, client_id, now))

    # -- tenant switches --------------------------------------------------------
    def tenant_settings(self, tid: str) -> dict:
        rows = self.query("SELECT users_may_consent, assignment_required, assigned "
                          "FROM tenant_settings WHERE tid=?", (tid,))
        if not rows:
            return {}
        row = rows[0]
        out: dict = {}
        if row["users_may_consent"] is not None:
            out["users_may_consent"] = bool(row["users_may_consent"])
        if row["assignment_required"] is not None:
            out["assignment_required"] = bool(row["assignment_required"])
        if row["assigned"] is not None:
            out["assigned"] = json.loads(row["assigned"])
        return out

    def update_tenant_settings(self, tid: str, **changes) -> None:
        """Set the given switches; a None value leaves that switch as it is."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO tenant_settings (tid) VALUES (?)", (tid,))
            for column, value in changes.items():
                if value is None:
                    continue
                stored = json.dumps(list(value)) if column == "assigned" else int(bool(value))
                # Column names come from our own keyword arguments, never from a request.
                db.execute(f"UPDATE tenant_settings SET {column}=? WHERE tid=?", (stored, tid))

    # -- app-role assignments (Enterprise applications -> the app -> Users and groups) --------------
    def app_role_assignments(self, tid: str, client_id: str) -> list[tuple[str, str]]:
        """(principal id, role value) pairs of the tenant's assignments for the app."""
        return [(r["principal_id"], r["role"]) for r in self.query(
            "SELECT principal_id, role FROM app_role_assignments WHERE tid=? AND client_id=? "
            "ORDER BY principal_id, role", (tid, client_id))]

    def set_app_role_assignment(self, tid: str, client_id: str, principal_id: str, role: str,
                                assigned: bool) -> None:
        with self.tx() as db:
            if assigned:
                db.execute("INSERT OR IGNORE INTO app_role_assignments (tid, client_id, principal_id, role) "
                           "VALUES (?, ?, ?, ?)", (tid, client_id, principal_id, role))
            else:
                db.execute("DELETE FROM app_role_assignments WHERE tid=? AND client_id=? AND principal_id=? "
                           "AND role=?", (tid, client_id, principal_id, role))
    # -- directory changes: user states, group members ---------------------------
    def user_state(self, oid: str) -> str | None:
        rows = self.query("SELECT state FROM user_states WHERE oid=?", (oid,))
        return rows[0]["state"] if rows else None

    def set_user_state(self, oid: str, state: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO user_states (oid, state) VALUES (?, ?)", (oid, state))

    def group_members(self, gid: str) -> list[str] | None:
        rows = self.query("SELECT members FROM group_members WHERE gid=?", (gid,))
        return json.loads(rows[0]["members"]) if rows else None

    def set_group_members(self, gid: str, members: list[str]) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO group_members (gid, members) VALUES (?, ?)",
                       (gid, json.dumps(list(members))))

    # -- provisioning: credentials, last cycle, what was provisioned --------------
    def provisioning(self, tid: str) -> dict:
        rows = self.query("SELECT tenant_url, token, scope, external_id, last_cycle FROM provisioning WHERE tid=?",
                          (tid,))
        if not rows:
            return {"tenant_url": None, "token": None, "scope": None, "external_id": None, "last_cycle": None}
        row = dict(rows[0])
        row["last_cycle"] = json.loads(row["last_cycle"]) if row["last_cycle"] else None
        return row

    def update_provisioning(self, tid: str, **changes) -> None:
        """Set the given fields (tenant_url, token, scope, external_id, last_cycle); None leaves a field as it is."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO provisioning (tid) VALUES (?)", (tid,))
            for column, value in changes.items():
                if value is None:
                    continue
                stored = json.dumps(value) if column == "last_cycle" else value
                # Column names come from our own keyword arguments, never from a request.
                db.execute(f"UPDATE provisioning SET {column}=? WHERE tid=?", (stored, tid))

    def provisioned(self, tid: str, kind: str) -> dict[str, dict]:
        """What a cycle provisioned: {oid: {"scim_id", "members"}} for kind "user" or "group"."""
        rows = self.query("SELECT oid, scim_id, members FROM provisioned WHERE tid=? AND kind=?", (tid, kind))
        return {r["oid"]: {"scim_id": r["scim_id"],
                           "members": json.loads(r["members"]) if r["members"] else []} for r in rows}

    def set_provisioned_many(self, tid: str, changes: list[tuple[str, str, str | None, list[str] | None]]) -> None:
        """Remember (or, with scim_id None, forget) the target's id of each (kind, oid, scim_id, members), in one
        transaction."""
        if not changes:
            return
        with self.tx() as db:
            for kind, oid, scim_id, members in changes:
                if scim_id is None:
                    db.execute("DELETE FROM provisioned WHERE tid=? AND kind=? AND oid=?", (tid, kind, oid))
                    continue
                db.execute("INSERT OR REPLACE INTO provisioned (tid, kind, oid, scim_id, members) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (tid, kind, oid, scim_id, json.dumps(sorted(members)) if members is not None else None))
