"""Login sessions (start, check, end, sweep) and the pending sign-in state a browser carries.

`state` is the browser's session mapping, passed in by the caller: the domain reads and writes keys in it but
knows no cookie (blueprints/websession.py rotates the cookie and the CSRF secret and calls Flask-Login).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import fields
from datetime import timedelta
from typing import Any, MutableMapping

from flask import current_app
from sqlalchemy import bindparam, select

import throttles
from domain.addresses import parse_number
from domain.errors import FlowFinished, InvalidInput
from domain.profiles import scrub_deleted
from models import LoginSession, SessionUser, StoredProfile, User, db, utcnow

State = MutableMapping[str, Any]
PENDING_MAX_AGE = 600  # seconds a started Microsoft sign-in or admin-consent request stays usable
MAX_PENDING = 3  # a few tabs may sign in at once


def sid_hash(sid: Any) -> str | None:
    return hashlib.sha256(sid.encode()).hexdigest() if isinstance(sid, str) else None


def current_sid_hash(state: State) -> str | None:
    return sid_hash(state.get("sid"))


def start_session(user: User, method: str, state: State, *, entra_sid: str | None = None) -> str:
    """Record a new server-side session and put its id in a cleared `state` (the caller commits and rotates the
    cookie); returns the id's hash. Sign-ins pending in other tabs stay usable (single-use, PKCE-bound).
    `entra_sid`: the ID token's `sid`, so a sign-out at Microsoft can end this session (front-channel logout)."""
    flows = state.get("flows")
    previous = current_sid_hash(state)
    if previous is not None:
        drop_login_session(previous)  # a sign-in on top of another replaces it
    state.clear()
    if isinstance(flows, dict):
        _keep(state, "flows", {k: v for k, v in flows.items() if fresh(v)})
    sid = secrets.token_urlsafe(32)
    db.session.add(LoginSession(id=sid_hash(sid), user_id=user.id, method=method, entra_sid_hash=sid_hash(entra_sid)))
    state["sid"] = sid
    _sweep_now_and_then()  # sign-ins tidy up sessions nobody came back to
    return sid_hash(sid)


# Every signed-in request runs this, so it is built once (building and cache-keying a statement costs more than
# running it), as a Core query of the columns a page needs: no ORM object to build (SessionUser).
_users, _sessions = User.__table__, LoginSession.__table__
_SESSION_USER_COLUMNS = [field.name for field in fields(SessionUser)]  # the users columns, in SessionUser's order
_SESSION_USER = (select(*(_users.c[name] for name in _SESSION_USER_COLUMNS), _users.c.blocked,
                        _sessions.c.created_at, _sessions.c.last_seen_at)
                 .join(_sessions, _sessions.c.user_id == _users.c.id)
                 .where(_sessions.c.id == bindparam("sid_hash")))


def session_user(state: State, user_id: str) -> SessionUser | None:
    """The signed-in user, only while their server-side session is alive (idle and absolute limits)."""
    hashed = current_sid_hash(state)
    if hashed is None or parse_number(user_id) is None:
        return None
    found = db.session.connection().execute(_SESSION_USER, {"sid_hash": hashed}).first()
    if found is None or found.id != parse_number(user_id):
        return None
    now = utcnow()
    cfg = current_app.config
    last_seen_at = found.last_seen_at
    # Blocking ends a user's sessions; this also ends one a sign-in created while the block was being saved.
    if (found.blocked or now - last_seen_at > timedelta(minutes=cfg["SESSION_IDLE_MINUTES"])
            or now - found.created_at > timedelta(hours=cfg["SESSION_MAX_HOURS"])):
        drop_login_session(hashed)
        db.session.commit()
        scrub_deleted()
        return None
    if now - last_seen_at > timedelta(seconds=60):  # written at most once a minute
        db.session.execute(db.update(LoginSession).where(LoginSession.id == hashed).values(last_seen_at=now))
        db.session.commit()
    return SessionUser(*found[:len(_SESSION_USER_COLUMNS)])


_USER_BY_ID = select(User).where(User.id == bindparam("user_id"))  # cheaper than Session.get's statement each time


def user_of(signed_in: SessionUser) -> User | None:
    """The `User` entity of a signed-in user, for the services that take one (None once removed meanwhile)."""
    return db.session.execute(_USER_BY_ID, {"user_id": signed_in.id}).scalar_one_or_none()


def end_session(state: State) -> str | None:
    """Sign out: drop the server-side session (and any profile copy that lived only for it); return its method."""
    hashed = current_sid_hash(state)
    method = (db.session.scalar(db.select(LoginSession.method).where(LoginSession.id == hashed))
              if hashed is not None else None)
    if method is not None and drop_login_session(hashed):
        db.session.commit()
        scrub_deleted()
    return method


def end_sessions_for_entra_sid(entra_sid: str, tenant_id: str | None = None) -> int:
    """Front-channel logout: end every session started from that Microsoft session (of that tenant's users, when
    given) and commit; returns how many ended."""
    query = db.select(LoginSession.id).where(LoginSession.entra_sid_hash == sid_hash(entra_sid))
    if tenant_id is not None:
        query = query.join(User, User.id == LoginSession.user_id).where(User.tenant_id == tenant_id)
    ended = sum(drop_login_session(hashed) for hashed in db.session.execute(query).scalars().all())
    db.session.commit()
    if ended:
        scrub_deleted()
    return ended


def drop_login_session(hashed: str) -> bool:
    """Delete a server-side session and the profile copy held only for it (the caller commits); False if none."""
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.kept == db.false(),
                                                      StoredProfile.session_id == hashed))
    return bool(db.session.execute(db.delete(LoginSession).where(LoginSession.id == hashed)).rowcount)


def _sweep_now_and_then() -> None:
    """Sweep at this sign-in if this worker has not for SESSION_SWEEP_SECONDS (0: at every sign-in). A sweep is
    tidying only: the session check refuses expired sessions whether or not they were swept."""
    every = current_app.config["SESSION_SWEEP_SECONDS"]
    now = time.monotonic()
    last = current_app.extensions.get("session_swept_at")
    if last is None or now - last >= every:
        current_app.extensions["session_swept_at"] = now
        sweep_expired_sessions()


def end_all_sessions(user_id: int) -> int:
    """End every session of a user and the profile copies held only for them (the caller commits); return how many."""
    theirs = db.select(LoginSession.id).where(LoginSession.user_id == user_id)
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.kept == db.false(),
                                                      StoredProfile.session_id.in_(theirs)),
                       execution_options={"synchronize_session": False})
    return db.session.execute(db.delete(LoginSession).where(LoginSession.user_id == user_id),
                              execution_options={"synchronize_session": False}).rowcount or 0


def sweep_expired_sessions() -> tuple[int, int]:
    """Delete sessions past their idle or absolute limit, profile copies no live session holds and expired
    sign-in throttle counts (caller commits).

    Returns (sessions, copies) deleted. Runs at sign-ins (see _sweep_now_and_then) and as `flask --app app sweep-sessions`.
    """
    cfg = current_app.config
    now = utcnow()
    expired = list(db.session.execute(db.select(LoginSession.id).where(
        (LoginSession.last_seen_at < now - timedelta(minutes=cfg["SESSION_IDLE_MINUTES"]))
        | (LoginSession.created_at < now - timedelta(hours=cfg["SESSION_MAX_HOURS"])))).scalars())
    if expired:
        db.session.execute(db.delete(LoginSession).where(LoginSession.id.in_(expired)),
                           execution_options={"synchronize_session": False})
    # Session-only copies whose session is gone (expired above, or replaced by a later sign-in).
    copies = db.session.execute(
        db.delete(StoredProfile).where(StoredProfile.kept == db.false(),
                                       StoredProfile.session_id.not_in(db.select(LoginSession.id))
                                       | StoredProfile.session_id.is_(None)),
        execution_options={"synchronize_session": False}).rowcount
    throttles.forget_expired()
    return len(expired), copies or 0


def sweep_sessions() -> tuple[int, int]:
    """Sweep expired sessions as one unit of work (the CLI's entry point)."""
    found = sweep_expired_sessions()
    db.session.commit()
    scrub_deleted()
    return found


# -- pending state: Microsoft sign-ins ("flows") and admin-consent requests, single use, 10 minutes -------------

def fresh(pending: Any) -> bool:
    return isinstance(pending, dict) and utcnow().timestamp() - pending.get("started", 0) <= PENDING_MAX_AGE


def _keep(state: State, kind: str, entries: dict[str, Any]) -> None:
    """None pending, no key (the cookie stays small)."""
    if entries:
        state[kind] = entries
    else:
        state.pop(kind, None)


def put_pending(state: State, kind: str, key: str, entry: dict[str, Any]) -> None:
    """Keep a pending request under `key`, dropping expired ones and the oldest beyond MAX_PENDING."""
    waiting = {k: v for k, v in dict(state.get(kind) or {}).items() if fresh(v)}
    while len(waiting) >= MAX_PENDING:
        waiting.pop(min(waiting, key=lambda k: waiting[k]["started"]))
    waiting[key] = {**entry, "started": utcnow().timestamp()}
    state[kind] = waiting


def take_pending(state: State, kind: str, states: list[str], *, unknown: str, expired: str,
                 malformed: str | None = None) -> dict[str, Any]:
    """Remove and return the pending request a callback's state names, before anything else happens (no replay):
    FlowFinished(unknown) when none is pending here, InvalidInput(expired) after 10 minutes, InvalidInput(malformed)
    for a state that cannot be one of ours."""
    key = states[0] if len(states) == 1 and states[0] and len(states[0]) <= 128 else None
    if key is None and malformed:
        raise InvalidInput(malformed, title="Start again")
    waiting = dict(state.get(kind) or {})
    pending = waiting.pop(key, None) if key else None
    _keep(state, kind, waiting)
    if pending is None:
        raise FlowFinished(unknown, title="Start again")
    if not fresh(pending):
        raise InvalidInput(expired, title="Start again")
    return pending


def remember_finished(state: State, pending: dict[str, Any]) -> None:
    """After a sign-in, remember where it went, so re-opening its callback URL (Back, history) goes there again."""
    key = pending.get("flow", {}).get("state", "")
    state["finished"] = [hashlib.sha256(key.encode()).hexdigest()[:16], pending.get("next") or "/"]


def finished_destination(state: State, states: list[str]) -> str:
    """Where a signed-in user re-opening a finished callback goes: that sign-in's destination, else home."""
    done = state.get("finished")
    if (len(states) == 1 and isinstance(done, list) and len(done) == 2
            and hmac.compare_digest(str(done[0]), hashlib.sha256(states[0].encode()).hexdigest()[:16])):
        return str(done[1])
    return "/"
