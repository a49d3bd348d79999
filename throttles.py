"""The sign-in throttles' counters in the portal's own database, so every worker and host counts together.

Flask-Limiter counts the per-IP limits before a request reaches its view; `hit` and `clear` below count what only
a view can know about (a failed password check), with the same strategy and storage.

A storage backend for `limits`, the engine under Flask-Limiter, selected with
RATELIMIT_STORAGE_URI = "portal-database://" (the default). It supports the moving window, the sign-in throttles'
strategy: one row per counted request (`sign_in_hits`), counted while its window lasts. And the fixed window, the
SCIM endpoint's (app._Limiter): one row per key (`rate_counts`) incremented in one statement, so a provisioning cycle
of tens of thousands of requests costs the same per request at its end as at its start. Counting runs in its own
short transaction, serialised per key, so parallel requests on several workers cannot all slip under a limit; a
request's limits are counted in one transaction (`counting_together`). A fixed window's commit does not wait for the
disk (`_not_waiting_for_the_disk`): a minute's count need not outlive a power cut.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator

from flask import current_app, g, has_app_context, has_request_context
from limits import parse_many
from limits.storage import MovingWindowSupport, Storage
from sqlalchemy import Float, Integer, String, bindparam, case, column, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from models import RateCount, SignInHit, db

SCHEME = "portal-database"

_hits = SignInHit.__table__
# Built once (building and cache-keying a statement costs more than running it).
_IN_WINDOW = (_hits.c.key == bindparam("key", type_=String)) & (_hits.c.at > bindparam("since", type_=Float))
# Inserts one row only while the window has room; returns it (psycopg reports no row count for this form).
_ACQUIRE = insert(_hits).from_select(
    ["key", "at", "expires_at"],
    select(bindparam("key", type_=String), bindparam("at", type_=Float), bindparam("expires_at", type_=Float))
    .where(select(func.count()).where(_IN_WINDOW).scalar_subquery() + bindparam("amount", type_=Integer)
           <= bindparam("limit", type_=Integer)))
# The same, returning the window as it was before it (for the request's X-RateLimit-* headers): its other rows, as
# SQLite's RETURNING sees the new row and PostgreSQL's does not. Text: SQLAlchemy renders no correlated subquery in
# RETURNING. It counts the window a second time, so only the count the headers show takes it (_acquire).
_ACQUIRE_WINDOW = _ACQUIRE.returning(*(
    text(f"SELECT {aggregate} FROM sign_in_hits AS counted WHERE counted.key = :key AND counted.at > :since "
         "AND counted.id <> sign_in_hits.id").bindparams(bindparam("key", type_=String),
                                                         bindparam("since", type_=Float))
    .columns(column(name, type_)).scalar_subquery()
    for aggregate, name, type_ in (("min(counted.at)", "oldest", Float), ("count(*)", "counted", Integer))))
_ACQUIRE = _ACQUIRE.returning(_hits.c.id)
_WINDOW = select(func.min(_hits.c.at), func.count()).where(_IN_WINDOW)
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")

_counts = RateCount.__table__


def _incr_statement(dialect: str):
    """Add `amount` to a key's count, or start it afresh (with a new window) once its window has passed; returns the
    count and when its window ends. One statement (an upsert), atomic on SQLite and PostgreSQL alike."""
    counted = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect](_counts).values(
        key=bindparam("key", type_=String), count=bindparam("amount", type_=Integer),
        expires_at=bindparam("expires_at", type_=Float))
    passed = _counts.c.expires_at <= bindparam("now", type_=Float)
    return counted.on_conflict_do_update(index_elements=[_counts.c.key], set_={
        "count": case((passed, counted.excluded["count"]), else_=_counts.c.count + counted.excluded["count"]),
        "expires_at": case((passed, counted.excluded.expires_at), else_=_counts.c.expires_at),
    }).returning(_counts.c.count, _counts.c.expires_at)


_INCR = {dialect: _incr_statement(dialect) for dialect in ("postgresql", "sqlite")}
_COUNT = select(_counts.c.count, _counts.c.expires_at).where(_counts.c.key == bindparam("key", type_=String))


_PROBE_KEY = "health-check"  # counted keys are hashes, so this one never meets a limit


def probe_write(conn) -> None:
    """Write one count and remove it again in `conn`'s transaction (the caller commits): the health check."""
    hit = conn.execute(insert(_hits).values(key=_PROBE_KEY, at=0.0, expires_at=0.0).returning(_hits.c.id)).scalar()
    conn.execute(delete(_hits).where(_hits.c.id == hit))


class DatabaseStorage(Storage, MovingWindowSupport):
    """Moving-window counters in the `sign_in_hits` table, fixed-window counts in `rate_counts` (used inside requests:
    it needs the app context)."""

    STORAGE_SCHEME = [SCHEME]

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Count `amount` requests under `key` unless that would exceed `limit` within the last `expiry` seconds."""
        if amount > limit:
            return False
        with _counting() as conn:
            return self._acquire(conn, key, limit, expiry, amount)

    @staticmethod
    def _acquire(conn, key: str, limit: int, expiry: int, amount: int) -> bool:
        now = time.time()
        row = {"key": key, "at": now, "expires_at": now + expiry}
        if conn.dialect.name == "postgresql":
            conn.execute(_LOCK, {"key": key})  # parallel requests for this key queue here (until the commit)
        # The request's rate limit headers show the window its first count left (get_moving_window), without a query
        # again: Flask-Limiter counts a request's limits smallest window first and shows that one unless another
        # refuses (that one is then read). The other counts do not count their window twice.
        windows = g.setdefault("rate_windows", {}) if has_request_context() else None
        report = windows is not None and not windows
        # One statement: on SQLite it holds the write lock from its start, so parallel requests queue there.
        taken = conn.execute(_ACQUIRE_WINDOW if report else _ACQUIRE,
                             {**row, "since": now - expiry, "amount": amount, "limit": limit}).first()
        if taken is None:
            if windows:
                windows.pop(key, None)
            return False
        if amount > 1:  # the rest of a costlier request, still under the lock
            conn.execute(insert(_hits), [row] * (amount - 1))
        if report:
            oldest, counted = taken
            windows[key] = (min(oldest, now) if oldest is not None else now, counted + amount)
        elif windows:
            windows.pop(key, None)  # counted again in this request: no longer the window kept
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(when the oldest counted request of the window was made, how many are counted)."""
        taken = g.get("rate_windows", {}).get(key) if has_request_context() else None
        if taken is not None:
            return taken
        now = time.time()
        with db.engine.connect() as conn:
            oldest, counted = conn.execute(_WINDOW, {"key": key, "since": now - expiry}).one()
        return (oldest if oldest is not None else now), counted

    def clear(self, key: str) -> None:
        if has_app_context():
            g.get("rate_counts", {}).pop(key, None)
            g.get("rate_windows", {}).pop(key, None)
        with db.engine.begin() as conn:
            conn.execute(delete(_hits).where(_hits.c.key == key))
            conn.execute(delete(_counts).where(_counts.c.key == key))

    def reset(self) -> int | None:
        with db.engine.begin() as conn:
            return conn.execute(delete(_hits)).rowcount + conn.execute(delete(_counts)).rowcount

    def check(self) -> bool:
        try:
            with db.engine.connect() as conn:
                conn.execute(select(1))
            return True
        except SQLAlchemyError:
            return False

    # The fixed window (the SCIM endpoint's limit): a count per key in `rate_counts`.

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count `amount` more under `key` (from 0 with a window of `expiry` seconds once the last has passed); the
        count, this one included."""
        now = time.time()
        with _counting() as conn:
            _not_waiting_for_the_disk(conn)
            count, expires_at = conn.execute(_INCR[conn.dialect.name], {
                "key": key, "amount": amount, "expires_at": now + expiry, "now": now}).one()
        if has_app_context():  # the request's rate limit headers show this count (get, get_expiry): no query again
            g.setdefault("rate_counts", {})[key] = (count, expires_at)
        return count

    def get(self, key: str) -> int:
        count, expires_at = self._count(key)
        return count if expires_at > time.time() else 0

    def get_expiry(self, key: str) -> float:
        return max(self._count(key)[1], time.time())

    @staticmethod
    def _count(key: str) -> tuple[int, float]:
        taken = g.get("rate_counts", {}).get(key) if has_app_context() else None
        if taken is not None:
            return taken
        with db.engine.connect() as conn:
            row = conn.execute(_COUNT, {"key": key}).first()
        return (row.count, row.expires_at) if row is not None else (0, 0.0)


@contextmanager
def _counting():
    """The request's counting transaction (counting_together), else a transaction of its own."""
    together = g.get("throttle_counting") if has_app_context() else None
    if together is not None:
        yield together.connection()
        return
    with db.engine.connect() as conn:
        try:
            with conn.begin():
                yield conn
        finally:
            _restore_synchronous(conn)


_SYNCHRONOUS = "throttles.synchronous"  # in a SQLite connection's info: its own level while a count lowers it


def _not_waiting_for_the_disk(conn) -> None:
    """A fixed window's count must be exact and seen by every worker at once, not outlive a power cut (its window
    is a minute): its commit does not wait for the disk to confirm. PostgreSQL: synchronous_commit off for this
    transaction. SQLite (WAL): synchronous NORMAL until the commit, set before the transaction's first write (it
    refuses inside one): the commit is in the log, atomic and visible as before; the log reaches the disk at the
    next commit that waits (any other write) or checkpoint."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        return
    sqlite = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite" and _SYNCHRONOUS not in conn.info and not sqlite.in_transaction:
        conn.info[_SYNCHRONOUS] = sqlite.execute("PRAGMA synchronous").fetchone()[0]
        sqlite.execute("PRAGMA synchronous=NORMAL")


def _restore_synchronous(conn) -> None:
    """After the counting transaction ended: the connection's own level again, for whatever it runs next."""
    level = conn.info.pop(_SYNCHRONOUS, None)
    if level is None:
        return
    try:
        conn.connection.dbapi_connection.execute(f"PRAGMA synchronous={int(level)}")
    except Exception:  # the driver's own error: the connection is not to be used again at the lower level
        conn.invalidate()


@contextmanager
def counting_together() -> Iterator[None]:
    """Count every limit acquired inside in one transaction: one commit per request instead of one per limit.

    The transaction opens at the first count, so a request the limiter lets go (every page view) touches no
    database. Committed also when a limit refuses (the counts before it stay, as when each was its own
    transaction) and rolled back only on a database error. Limits are always taken in the same order
    (Flask-Limiter sorts them), so two requests holding per-key locks cannot wait for each other."""
    if g.get("throttle_counting") is not None:
        yield
        return
    together = g.throttle_counting = _Together()
    try:
        yield
    except SQLAlchemyError:
        if together.conn is not None:
            together.conn.rollback()
        raise
    finally:
        g.throttle_counting = None
        if together.conn is not None:
            with together.conn as conn:  # closed after the commit
                try:
                    if conn.in_transaction():
                        conn.commit()
                finally:
                    _restore_synchronous(conn)


class _Together:
    """A request's counting transaction, opened when the first limit is counted."""

    conn = None

    def connection(self):
        if self.conn is None:
            self.conn = db.engine.connect()
            self.conn.begin()
        return self.conn


def forget_expired() -> int:
    """Delete counted requests and counts whose window has passed (the caller commits); how many."""
    now, sync = time.time(), {"synchronize_session": False}
    return sum(db.session.execute(delete(model).where(model.expires_at <= now), execution_options=sync).rowcount or 0
               for model in (SignInHit, RateCount))


def _strategy():
    """The app's Flask-Limiter strategy (the configured storage), or None while the throttles are switched off."""
    limiter = next(iter(current_app.extensions.get("limiter", ())), None)
    return limiter.limiter if limiter is not None and limiter.enabled else None


def hit(limit_text: str, *identifiers: str) -> int:
    """Count one event under each limit of `limit_text` ("10 per minute; 100 per hour"); 0 when that was allowed,
    else the seconds until it would be (the event is then not counted against the exhausted limit)."""
    strategy = _strategy()
    if strategy is None:
        return 0
    with counting_together():
        refused = next((item for item in parse_many(limit_text) if not strategy.hit(item, *identifiers)), None)
    if refused is None:
        return 0
    reset_at = strategy.get_window_stats(refused, *identifiers).reset_time
    return max(1, math.ceil(reset_at - time.time()))


def clear(limit_text: str, *identifiers: str) -> None:
    """Forget every event counted under `identifiers` for the limits of `limit_text`."""
    strategy = _strategy()
    if strategy is not None:
        for item in parse_many(limit_text):
            strategy.clear(item, *identifiers)
