"""Framework wiring on the factory's side: the database and its migrations, SQLite tuning, the vault and the
Entra client bound to the app, the start-up schema and key check, and the health check's database probe."""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

from flask import Flask, current_app
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import entra
import throttles
import vault
from domain.keys import check_vault
from models import VaultCheck, db

log = logging.getLogger(__name__)

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def init_app(app: Flask) -> None:
    """Bind the database, the migrations, the vault and the Entra client to the app."""
    db.init_app(app)
    with app.app_context():
        tune_sqlite(db.engine)
    vault.init_app(app)
    entra.init_app(app)


def register_migrations(app: Flask) -> None:
    """Bind Flask-Migrate (Alembic) to the app when a command or a demo start needs it: not at import, so a web
    worker does not carry its 10 MB."""
    if "migrate" not in app.extensions:
        from flask_migrate import Migrate
        # Batch mode lets later migrations alter SQLite tables (which have no ALTER COLUMN).
        Migrate(app, db, directory=MIGRATIONS, render_as_batch=True)


def upgrade_schema() -> None:
    """Run the schema migrations (safe to repeat) in the current app."""
    from flask_migrate import upgrade
    register_migrations(current_app)
    upgrade(directory=MIGRATIONS)


def ensure_schema() -> None:
    """Run the schema migrations (safe to repeat) and check that the configured keys read the stored data."""
    upgrade_schema()
    check_vault()


def startup_check(create: bool) -> None:
    """At start-up: migrate the schema (demo) and refuse keys that cannot read what is stored.

    Workers and instances starting together take turns here, so exactly one of them migrates and stores the key
    check value while the others wait and then find it done.
    """
    with _startup_lock(db.engine):
        if create:
            upgrade_schema()
        if db.inspect(db.engine).has_table(VaultCheck.__tablename__):
            check_vault()


@contextmanager
def _startup_lock(engine: Engine) -> Iterator[None]:
    """Hold a lock every process of this database shares: an advisory lock on PostgreSQL, a file lock on SQLite."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # a session-level lock on a connection of its own, held until unlocked
            key = {"name": "portal start-up " + (conn.scalar(text("SELECT current_schema()")) or "")}
            conn.execute(text("SELECT pg_advisory_lock(hashtextextended(:name, 0))"), key)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))"), key)
                conn.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        path = urlsplit(engine.url.database).path if engine.url.database.startswith("file:") else engine.url.database
        with open(path + ".startup-lock", "a") as lock:  # beside the database file: every process that opens it
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        yield


def tune_sqlite(engine: Engine) -> None:
    """SQLite: WAL lets readers run beside the one writer, who waits rather than fails (several workers);
    secure_delete overwrites deleted rows, so a deleted copy's ciphertext does not linger in free pages."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")  # ms; writes are short, a queue of them is not
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()


def database_ok() -> bool:
    """True while the database answers and takes a write: a full disk or a read-only file fails the check.

    The write is one row added and removed in a committed transaction (a throttle count no limit ever reads),
    so the database must really write its log; it costs about as much as one counted sign-in attempt.
    """
    try:
        with db.engine.begin() as conn:
            throttles.probe_write(conn)
        return True
    except SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        log.warning("Health check: database unavailable: %s: %s", type(orig).__name__,
                    (str(orig).splitlines() or [""])[0][:200])
        return False
