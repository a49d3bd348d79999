"""Domain services: organisations, users, sign-in, single sign-on, stored profiles and the audit log.

Views call these; each service commits once per unit of work and raises a PortalError for anything
the user must be told about.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

import idna
from flask import Flask, current_app, g, has_request_context, request, session
from flask_login import LoginManager, login_user, logout_user
from flask_migrate import Migrate, upgrade
from flask_wtf.csrf import generate_csrf
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.security import check_password_hash, generate_password_hash
from zxcvbn import zxcvbn

import entra
import throttles
import vault
from models import (AuditEvent, Domain, LoginSession, Organization, SignInHit, StoredProfile, User, VaultCheck, db,
                    utcnow)

log = logging.getLogger(__name__)

# Where Microsoft sends the browser back (the blueprints route them; entra builds the redirect URIs).
CALLBACK_PATH = entra.CALLBACK_PATH
ADMIN_CONSENT_CALLBACK_PATH = entra.ADMIN_CONSENT_CALLBACK_PATH

MAX_EMAIL = 254
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # what the sign-in form accepts
_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
# Verifies the password of an unknown user, so both cases take the same time.
_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))


# -- errors -------------------------------------------------------------------------------------

class PortalError(Exception):
    """A failure the user is shown on the error page, with its HTTP status."""

    status = 400
    title = "Request not accepted"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None, title: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title


class InvalidInput(PortalError):
    status = 400
    title = "Check what you entered"


class NotAllowed(PortalError):
    status = 403
    title = "Not allowed"


class SignInFailed(PortalError):
    status = 401
    title = "Sign-in failed"


class Throttled(PortalError):
    """Too many failed password checks for one account from one client; retry_after in seconds."""

    status = 429
    title = "Too many attempts"

    def __init__(self, retry_after: int):
        super().__init__("Too many sign-in attempts came from here for this account. Wait a minute, then try again.")
        self.retry_after = retry_after


# -- set-up -------------------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Bind the database, the vault, the Entra client and Flask-Login to the app."""
    db.init_app(app)
    # Batch mode lets later migrations alter SQLite tables (which have no ALTER COLUMN).
    Migrate(app, db, directory=MIGRATIONS, render_as_batch=True)
    with app.app_context():
        tune_sqlite(db.engine)
    vault.init_app(app)
    entra.init_app(app)
    manager = LoginManager()
    manager.login_view = "auth.login"
    manager.login_message = "Please sign in to see that page."
    manager.login_message_category = "info"
    manager.session_protection = None  # sessions are checked server-side instead
    manager.user_loader(load_session_user)
    manager.init_app(app)


def ensure_schema() -> None:
    """Run the schema migrations (safe to repeat) and check that the configured keys read the stored data."""
    upgrade(directory=MIGRATIONS)
    check_vault()


def startup_check(create: bool) -> None:
    """At start-up: migrate the schema (demo) and refuse keys that cannot read what is stored.

    Workers and instances starting together take turns here, so exactly one of them migrates and stores the key
    check value while the others wait and then find it done.
    """
    with _startup_lock(db.engine):
        if create:
            upgrade(directory=MIGRATIONS)
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


def check_vault() -> None:
    """Refuse keys that cannot read what is stored; store a check value on first use."""
    v = vault.get_vault()
    row = db.session.get(VaultCheck, 1)
    if row is None:
        db.session.add(VaultCheck(id=1, value=v.check_value()))
        db.session.commit()
    else:
        v.verify_check_value(row.value)


# -- email and domains --------------------------------------------------------------------------

def normalise_domain(raw: str) -> str:
    """Lower-case IDNA A-label without a trailing dot; InvalidInput if it is no domain."""
    name = (raw or "").strip().rstrip(".")
    if not name or len(name) > 253 or any(c.isspace() or ord(c) < 32 for c in name):
        raise InvalidInput("That is not a valid domain name.")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidInput("That is not a valid domain name.") from None
    if "." not in ascii_name:
        raise InvalidInput("A domain needs at least one dot, like example.com.")
    return ascii_name


def normalise_email(raw: str) -> str:
    """Trim, lower-case and IDNA-encode an email address; InvalidInput when it is not one."""
    value = (raw or "").strip()
    if not value or len(value) > MAX_EMAIL or value.count("@") != 1:
        raise InvalidInput("Enter an email address like name@example.com.")
    local, _, domain = value.partition("@")
    if not _LOCAL_PART.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidInput("Enter an email address like name@example.com.")
    try:
        domain = normalise_domain(domain)
    except InvalidInput:
        raise InvalidInput("Enter an email address like name@example.com.") from None
    return f"{local.lower()}@{domain}"


def organization_for_domain(domain: str) -> Organization | None:
    return db.session.execute(
        db.select(Organization).join(Domain).where(Domain.name == domain)
    ).scalar_one_or_none()


def _named(name: str, *, other_than: Organization | None = None) -> Organization | None:
    """The organisation whose name equals `name` without regard to case (Python's case folding, not SQL's)."""
    wanted = name.strip().casefold()
    query = db.select(Organization.id, Organization.name)
    if other_than is not None:
        query = query.where(Organization.id != other_than.id)
    for org_id, org_name in db.session.execute(query):
        if org_name.casefold() == wanted:
            return db.session.get(Organization, org_id)
    return None


def get_organization(name: str) -> Organization:
    """The organisation called `name`, without regard to case."""
    org = db.session.execute(db.select(Organization).where(Organization.name == (name or "").strip())
                             ).scalar_one_or_none() or _named(name or "")
    if org is None:
        raise InvalidInput(f"No organisation is called {name!r}.")
    return org


def organizations() -> list[tuple[Organization, int]]:
    """Every organisation with its number of users, by name."""
    counts = dict(db.session.execute(db.select(User.organization_id, db.func.count())
                                     .group_by(User.organization_id)).all())
    orgs = db.session.execute(db.select(Organization)).scalars().all()
    return [(org, counts.get(org.id, 0)) for org in sorted(orgs, key=lambda o: o.name.casefold())]


@dataclass(frozen=True)
class Realm:
    """Where the login prompt sends an email: 'sso' (Microsoft) or 'password'."""

    kind: str
    email: str
    organization: Organization | None = None


def find_realm(raw_email: str) -> Realm:
    """Home-realm discovery: an organisation with SSO active means Microsoft; anything else a password."""
    email = normalise_email(raw_email)
    org = organization_for_domain(email.rpartition("@")[2])
    if org is not None and org.sso_active:
        return Realm("sso", email, org)
    return Realm("password", email, org)


# -- users --------------------------------------------------------------------------------------

def user_email(user: User) -> str:
    """The user's email, decrypted; for a Microsoft-only account of an organisation that keeps no copy,
    the one in this session's profile copy, or "" when none is held."""
    if not user.email_enc:
        return _email_from_copy(user)
    return _open(user.email_enc, _email_aad(user), user, "email").decode()


def display_user(user: User | None) -> str:
    """How a user is named on pages: their email, decrypted for display only."""
    return (user_email(user) or "—") if user is not None else "—"


def _email_aad(user: User) -> bytes:
    return vault.aad("users", str(user.id), "email")


def _set_email(user: User, email: str) -> None:
    """Encrypt the email bound to the user's row (flushes first so the row has an id)."""
    v = vault.get_vault()
    if user.id is None:
        user.email_enc = b""
        user.email_hmac = v.blind_index(email)
        db.session.add(user)
        db.session.flush()
    user.email_hmac = v.blind_index(email)
    user.email_enc = v.encrypt(email.encode(), _email_aad(user))


def users_by_email(email: str, org: Organization | None = None) -> list[User]:
    query = db.select(User).where(User.email_hmac.in_(vault.get_vault().blind_indexes(email)))
    if org is not None:
        query = query.where(User.organization_id == org.id)
    return list(db.session.execute(query.order_by(User.id)).scalars())


class Operator:
    """The portal's operator acting through the CLI: named "operator (CLI)" in the audit log."""

    def __str__(self) -> str:
        return OPERATOR_NAME


OPERATOR_NAME = "operator (CLI)"
OPERATOR = Operator()
Actor = User | Operator | None


def _org_name(raw: str) -> str:
    name = (raw or "").strip()
    if not name or len(name) > 100 or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise InvalidInput("An organisation name is 1 to 100 printable characters.")
    return name


def _free_domains(raw: Iterable[str]) -> list[str]:
    names = sorted({normalise_domain(d) for d in raw})
    taken = db.session.execute(db.select(Domain.name).where(Domain.name.in_(names))).scalars().all()
    if taken:
        raise InvalidInput(f"Domain {taken[0]} belongs to another organisation already.")
    return names


def create_organization(name: str, domains: Iterable[str], actor: Actor = None) -> Organization:
    """Create an organisation with its email domains (audited when an actor is given)."""
    name = _org_name(name)
    if _named(name) is not None:
        raise InvalidInput(f"An organisation called {_named(name).name!r} exists already (names ignore case).")
    names = _free_domains(domains)
    if not names:
        raise InvalidInput("Give the organisation at least one domain.")
    org = Organization(name=name, domains=[Domain(name=d) for d in names])
    db.session.add(org)
    if actor is not None:
        db.session.flush()
        record("org_created", "success", org=org, actor=actor, detail=" ".join(names))
    _commit_or_conflict("That organisation or one of its domains exists already.")
    return org


def rename_organization(org: Organization, new_name: str, actor: Actor) -> str:
    """Give an organisation a new name (unique without regard to case); return the old one."""
    new_name = _org_name(new_name)
    clash = _named(new_name, other_than=org)
    if clash is not None:
        raise InvalidInput(f"An organisation called {clash.name!r} exists already (names ignore case).")
    old = org.name
    if old == new_name:
        raise InvalidInput(f"The organisation is called {old!r} already.")
    org.name = new_name
    record("org_renamed", "success", org=org, actor=actor, detail=f"{old} -> {new_name}")
    _commit_or_conflict("An organisation with that name exists already.")
    return old


def add_domain(org: Organization, raw_domain: str, actor: Actor) -> str:
    """Add an email domain to an organisation; it must belong to no organisation yet."""
    domain = normalise_domain(raw_domain)
    if domain in {d.name for d in org.domains}:
        raise InvalidInput(f"{domain} is one of {org.name}'s domains already.")
    _free_domains([domain])
    db.session.add(Domain(name=domain, organization=org))
    record("domain_added", "success", org=org, actor=actor, detail=domain)
    _commit_or_conflict(f"Domain {domain} belongs to another organisation already.")
    return domain


def remove_domain(org: Organization, raw_domain: str, actor: Actor) -> tuple[str, int]:
    """Remove an email domain from an organisation; return it and how many of its accounts have an email there.

    The last domain is refused: with none, no email leads to the organisation and no admin can be added
    (delete-org ends an organisation). Password accounts in a removed domain keep signing in with their
    password; Microsoft sign-ins from it no longer reach the organisation.
    """
    try:
        domain = normalise_domain(raw_domain)
    except InvalidInput:
        domain = (raw_domain or "").strip().lower()
    row = next((d for d in org.domains if d.name == domain), None)
    if row is None:
        raise InvalidInput(f"{domain or repr(raw_domain)} is not one of {org.name}'s domains.")
    if len(org.domains) == 1:
        raise InvalidInput(f"{domain} is {org.name}'s only domain: an organisation needs one. Add another domain "
                           "first, or delete the organisation.")
    users = db.session.execute(db.select(User).where(User.organization_id == org.id)).scalars()
    affected = sum(1 for u in users if _known_email(u).rpartition("@")[2] == domain)
    db.session.delete(row)
    record("domain_removed", "success", org=org, actor=actor, detail=f"{domain} accounts={affected}")
    db.session.commit()
    return domain, affected


def _known_email(user: User) -> str:
    """The user's email if the portal holds a readable one, else "" (for the operator's bookkeeping)."""
    try:
        return user_email(user)
    except StoredDataUnreadable:
        return ""


def delete_organization(org: Organization) -> dict[str, int]:
    """Delete an organisation with its domains, users and everything stored about them; return counts by kind.

    The deletion is recorded in the portal-wide audit log (no organisation), as the organisation's own log goes.
    SQLite does not enforce foreign keys here, so every dependent row is deleted explicitly.
    """
    user_ids = db.select(User.id).where(User.organization_id == org.id).scalar_subquery()
    users = db.session.execute(db.select(User).where(User.organization_id == org.id)).scalars().all()
    keys = {account_key(e) for e in (_known_email(u) for u in users) if e}
    sync = {"synchronize_session": False}
    counts = {
        "user": len(users),
        "profile copy": db.session.execute(db.delete(StoredProfile).where(StoredProfile.user_id.in_(user_ids)),
                                           execution_options=sync).rowcount or 0,
        "session": db.session.execute(db.delete(LoginSession).where(LoginSession.user_id.in_(user_ids)),
                                      execution_options=sync).rowcount or 0,
        "audit event": db.session.execute(db.delete(AuditEvent).where(
            (AuditEvent.organization_id == org.id) | AuditEvent.actor_id.in_(user_ids)), execution_options=sync
        ).rowcount or 0,
    }
    hits = 0
    for key in keys:  # the sign-in throttles count these accounts under their keyed hash
        hits += db.session.execute(db.delete(SignInHit).where(SignInHit.key.contains(key, autoescape=True)),
                                   execution_options=sync).rowcount or 0
    counts["throttle count"] = hits
    db.session.execute(db.update(Organization).where(Organization.id == org.id)
                       .values(sso_activated_by_id=None, admin_consent_by_id=None), execution_options=sync)
    db.session.execute(db.delete(User).where(User.organization_id == org.id), execution_options=sync)
    counts["domain"] = db.session.execute(db.delete(Domain).where(Domain.organization_id == org.id),
                                          execution_options=sync).rowcount or 0
    org_id = org.id
    db.session.execute(db.delete(Organization).where(Organization.id == org_id), execution_options=sync)
    record("org_deleted", "success", actor=OPERATOR,
           detail=f"organisation {org_id} " + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items()))
    db.session.commit()
    db.session.expire_all()
    scrub_deleted()
    log.info("Organisation %s deleted by the operator: %s", org_id, counts)
    return counts


def check_password(password: str, email: str) -> None:
    """Refuse a password NIST SP 800-63B says to refuse: short, one repeated character, the email in it, or one
    that is common or breached (zxcvbn's list of 30,000 from breaches, and its patterns on top of such words)."""
    if len(password or "") < MIN_PASSWORD:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"A password has at most {MAX_PASSWORD} characters (the sign-in form takes no more).")
    if len(set(password)) == 1:
        raise InvalidInput("That password is one character repeated: choose one that is harder to guess.")
    folded, local = password.casefold(), email.partition("@")[0]
    if email in folded or (len(local) >= 4 and local in folded):
        raise InvalidInput("That password contains the email address: choose one that does not.")
    # zxcvbn reads at most 72 characters; a long password is judged by its start.
    found = zxcvbn(password[:72], user_inputs=[email, local])
    if found["score"] < 3:
        why = found["feedback"]["warning"] or "It is close to a password found in lists of common or breached ones."
        raise InvalidInput(f"That password is too easy to guess. {why.rstrip('.')}. A few unrelated words make "
                           "a strong one.")


def create_local_user(email: str, org_name: str, password: str, *, role: str = "admin",
                      break_glass: bool = False, actor: Actor = None) -> User:
    """Create a password account in an organisation whose domains include the email's (audited when an actor
    is given)."""
    email = normalise_email(email)
    org = get_organization(org_name)
    if email.rpartition("@")[2] not in {d.name for d in org.domains}:
        raise InvalidInput(f"{email.rpartition('@')[2]} is not one of the domains of {org.name}.")
    check_password(password, email)
    if users_by_email(email):
        raise InvalidInput("A user with that email exists already.")
    user = User(organization=org, role=role, password_hash=generate_password_hash(password), break_glass=break_glass)
    _set_email(user, email)
    if actor is not None:
        record("user_created", "success", org=org, actor=actor,
               detail=f"user {user.id} {role}" + (" break-glass" if break_glass else "") + " password")
    _commit_or_conflict("A user with that email exists already.")
    return user


def set_password(raw_email: str, password: str, actor: Actor) -> tuple[User, int]:
    """Give a password account a new password and end all its sessions; return the user and sessions ended."""
    email = normalise_email(raw_email)
    user = next((u for u in users_by_email(email) if u.password_hash), None)
    if user is None:
        if users_by_email(email):
            raise InvalidInput(f"{email} signs in with Microsoft only: it has no password to reset.")
        raise InvalidInput(f"No account has the email {email}.")
    check_password(password, email)
    user.password_hash = generate_password_hash(password)
    sessions = db.select(LoginSession.id).where(LoginSession.user_id == user.id)
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.kept.is_(False),
                                                      StoredProfile.session_id.in_(sessions)),
                       execution_options={"synchronize_session": False})
    ended = db.session.execute(db.delete(LoginSession).where(LoginSession.user_id == user.id),
                               execution_options={"synchronize_session": False}).rowcount or 0
    record("password_reset", "success", org=user.organization, actor=actor,
           detail=f"user {user.id} sessions_ended={ended}")
    db.session.commit()
    scrub_deleted()
    return user, ended


def _commit_or_conflict(message: str) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise InvalidInput(message) from None


# -- password sign-in ---------------------------------------------------------------------------

def _requires_sso(org: Organization | None) -> bool:
    return org is not None and org.sso_active and org.require_sso


def password_sign_in(raw_email: str, password: str, *, client: str | None) -> User:
    """Check a password; unknown users and wrong passwords fail alike, and SSO enforcement applies.

    Each check counts against the (account, client address) pair first and a success forgets the pair's count,
    so only failed checks add up, and only for the client that made them: strangers cannot lock the owner out.
    """
    email = normalise_email(raw_email)
    pair = ("password-check", account_key(email), address_key(client))
    limit = current_app.config["RATELIMIT_SIGN_IN_PER_ACCOUNT"]
    retry_after = throttles.hit(limit, *pair)
    if retry_after:
        log.warning("Password checks refused: too many failures for one account from one client")
        raise Throttled(retry_after)
    candidates = [u for u in users_by_email(email) if u.password_hash]
    user = candidates[0] if candidates else None
    ok = check_password_hash(user.password_hash if user else _DUMMY_HASH, password or "") and user is not None
    # Where the email's organisation requires SSO, every answer but a break-glass account's success is the same
    # refusal, so a wrong and a right password (or no account at all) look alike.
    enforced = organization_for_domain(email.rpartition("@")[2])
    if ok and _requires_sso(user.organization):
        enforced = user.organization
    if not ok or (_requires_sso(enforced) and not user.break_glass):
        record("sign_in", "failure", org=user.organization if user else None, actor=user,
               detail="sso_required" if ok else "bad_password")
        db.session.commit()
        if _requires_sso(enforced):
            raise SignInFailed(f"{enforced.name} requires single sign-on. Sign in with Microsoft instead.", status=403)
        raise SignInFailed("The email or password is not right.")
    throttles.clear(limit, *pair)
    org = user.organization
    user.last_sign_in_at = utcnow()
    record("sign_in", "success", org=org, actor=user, detail="password")
    start_session(user, "password")
    db.session.commit()
    return user


# -- sessions -----------------------------------------------------------------------------------

def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def start_session(user: User, method: str) -> str:
    """Rotate the browser session and record it server-side (the caller commits); returns the id's hash."""
    flows = session.get("flows")
    previous = current_sid_hash()
    if previous is not None:
        _drop_login_session(previous)  # a sign-in on top of another replaces it
    session.clear()
    if isinstance(flows, dict):
        # Sign-ins started in other tabs stay usable (single-use, PKCE-bound); everything else is dropped.
        _keep_flows({k: v for k, v in flows.items() if time_ok(v)})
    sid = secrets.token_urlsafe(32)
    db.session.add(LoginSession(id=_sid_hash(sid), user_id=user.id, method=method))
    session.permanent = True
    session["sid"] = sid
    # A new CSRF secret now, in the cookie this response sets: otherwise the first page after sign-in makes one
    # and sends the cookie again. The token Flask-WTF cached for this request belongs to the cleared session.
    g.pop(current_app.config["WTF_CSRF_FIELD_NAME"], None)
    generate_csrf()
    login_user(user)
    # Flask-Login's client fingerprint serves only its session protection, which is off (checked server-side):
    # 128 characters less in a cookie every request carries.
    session.pop("_id", None)
    sweep_expired_sessions()  # every sign-in tidies up sessions nobody came back to
    return _sid_hash(sid)


_NUMBER = re.compile(r"[0-9]{1,9}")


def parse_number(text: str) -> int | None:
    """A whole number given as 1 to 9 ASCII digits, else None (`str.isdigit` also takes '²', which int() refuses)."""
    return int(text) if isinstance(text, str) and _NUMBER.fullmatch(text) else None


def current_sid_hash() -> str | None:
    sid = session.get("sid")
    return _sid_hash(sid) if isinstance(sid, str) else None


def load_session_user(user_id: str) -> User | None:
    """Flask-Login's loader: the user only while their server-side session is alive."""
    sid_hash = current_sid_hash()
    if sid_hash is None or parse_number(user_id) is None:
        return None
    found = login_session_with_user(sid_hash)
    if found is None:
        return None
    user, created_at, last_seen_at = found
    if user.id != parse_number(user_id):
        return None
    now = utcnow()
    cfg = current_app.config
    if (now - last_seen_at > timedelta(minutes=cfg["SESSION_IDLE_MINUTES"])
            or now - created_at > timedelta(hours=cfg["SESSION_MAX_HOURS"])):
        _drop_login_session(sid_hash)
        db.session.commit()
        scrub_deleted()
        return None
    if now - last_seen_at > timedelta(seconds=60):  # written at most once a minute
        db.session.execute(db.update(LoginSession).where(LoginSession.id == sid_hash).values(last_seen_at=now))
        db.session.commit()
    return user


def end_session() -> str | None:
    """Sign out: drop the server-side session (and any profile copy that lived only for it).

    Returns Microsoft's sign-out URL when the session came from Microsoft, so the browser signs out there too.
    """
    sid_hash = current_sid_hash()
    method = (db.session.scalar(db.select(LoginSession.method).where(LoginSession.id == sid_hash))
              if sid_hash is not None else None)
    if method is not None and _drop_login_session(sid_hash):
        db.session.commit()
        scrub_deleted()
    logout_user()
    session.clear()
    return entra.client().logout_url("/login") if method == "sso" else None


def _drop_login_session(sid_hash: str) -> bool:
    """Delete a server-side session and the profile copy held only for it (the caller commits); False if none."""
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.kept == db.false(),
                                                      StoredProfile.session_id == sid_hash))
    return bool(db.session.execute(db.delete(LoginSession).where(LoginSession.id == sid_hash)).rowcount)


# -- audit --------------------------------------------------------------------------------------

def record(action: str, outcome: str, *, org: Organization | None = None, actor: Actor = None,
           detail: str = "") -> AuditEvent:
    """Add an audit event to the current unit of work (the caller commits)."""
    by_operator = isinstance(actor, Operator)
    event = AuditEvent(organization_id=org.id if org is not None else None, actor=None if by_operator else actor,
                       by_operator=by_operator, action=action, outcome=outcome, detail=detail[:200],
                       ip=request.remote_addr if has_request_context() else None)
    db.session.add(event)
    return event


# -- single sign-on -----------------------------------------------------------------------------

FLOW_MAX_AGE = 600  # seconds a started Microsoft sign-in stays usable
MAX_PENDING_FLOWS = 3  # a few tabs may sign in at once


def needs_consent_explanation(realm: Realm) -> bool:
    """Explain what is read before Microsoft until the organisation has admin consent.

    Decided by the organisation alone: asking whether the email already has an account would tell the login
    prompt's visitors which emails do. So members see it at each sign-in until admin consent is recorded.
    """
    org = realm.organization
    return org is not None and org.admin_consent_at is None


def begin_sso(purpose: str, *, org: Organization, login_hint: str | None, next_path: str = "/",
              actor: User | None = None) -> str:
    """Start a Microsoft sign-in for `purpose` ('sign_in' or 'activate'); keep the flow; return the URL to go to."""
    domain_hint = login_hint.rpartition("@")[2] if login_hint else None
    flow, auth_uri = entra.client().start_sign_in(login_hint=login_hint, domain_hint=domain_hint,
                                                  prompt="login" if purpose == "activate" else None)
    flows = {k: v for k, v in session.get("flows", {}).items() if time_ok(v)}
    while len(flows) >= MAX_PENDING_FLOWS:
        flows.pop(min(flows, key=lambda k: flows[k]["started"]))
    flows[flow["state"]] = {"flow": flow, "purpose": purpose, "org_id": org.id, "next": next_path,
                            "actor_id": actor.id if actor else None,
                            "started": utcnow().timestamp()}  # float: "oldest" is well-defined
    session["flows"] = flows
    return auth_uri


def _keep_flows(flows: dict[str, Any]) -> None:
    """Pending sign-ins live in the cookie; none pending, no key (the cookie stays small)."""
    if flows:
        session["flows"] = flows
    else:
        session.pop("flows", None)


class FlowFinished(InvalidInput):
    """A callback for a sign-in that is not pending here: used already, or started in another browser."""


def _remember_finished(pending: dict[str, Any]) -> None:
    """After a sign-in, remember where it went, so re-opening its callback URL (Back, history) goes there again."""
    state = pending.get("flow", {}).get("state", "")
    session["finished"] = [hashlib.sha256(state.encode()).hexdigest()[:16], pending.get("next") or "/"]


def finished_destination(states: list[str]) -> str:
    """Where a signed-in user re-opening a finished callback goes: that sign-in's destination, else home."""
    done = session.get("finished")
    if (len(states) == 1 and isinstance(done, list) and len(done) == 2
            and hmac.compare_digest(str(done[0]), hashlib.sha256(states[0].encode()).hexdigest()[:16])):
        return str(done[1])
    return "/"


def time_ok(pending: dict[str, Any]) -> bool:
    return isinstance(pending, dict) and utcnow().timestamp() - pending.get("started", 0) <= FLOW_MAX_AGE


def take_flow(states: list[str]) -> dict[str, Any]:
    """Remove and return the pending sign-in a callback's state names; it can be used once only."""
    if len(states) != 1 or not states[0] or len(states[0]) > 128:
        raise InvalidInput("This sign-in answer is not valid. Start the sign-in again.", title="Start again")
    flows = dict(session.get("flows", {}))
    pending = flows.pop(states[0], None)
    _keep_flows(flows)
    if pending is None:
        raise FlowFinished("This sign-in is finished or was started in another browser. Start the sign-in again.",
                           title="Start again")
    if not time_ok(pending):
        raise InvalidInput("This sign-in took longer than 10 minutes and expired. Start it again.",
                           title="Start again")
    return pending


@dataclass(frozen=True)
class SsoOutcome:
    """A finished Microsoft sign-in: the user; for an activation by someone else's Microsoft account, that
    account's verified email (the tenant is bound, but the admin is not linked to it)."""
    user: User
    not_linked: str | None = None


def complete_sso(pending: dict[str, Any], params: dict[str, str], actor: User | None = None) -> SsoOutcome:
    """Finish a Microsoft sign-in: validate, then sign the user in or activate SSO. Nothing is stored on failure."""
    org = db.session.get(Organization, pending.get("org_id") or 0)
    purpose = pending.get("purpose")
    action = "sso_activate" if purpose == "activate" else "sign_in"
    try:
        if org is None:
            raise InvalidInput("The organisation of this sign-in no longer exists.")
        # End the transaction so its pooled connection serves other requests while Microsoft is asked.
        db.session.commit()
        result = entra.client().finish_sign_in(pending["flow"], params)
        if purpose == "activate":
            outcome = settle_races(lambda: _activate_sso(org, result, actor, pending))
        else:
            outcome = SsoOutcome(settle_races(lambda: _sso_sign_in(org, result)))
        _remember_finished(pending)
        return outcome
    except (entra.EntraError, PortalError) as e:
        db.session.rollback()
        reason = getattr(e, "reason", None) or type(e).__name__
        record(action, "failure", org=org, actor=actor, detail=reason)
        db.session.commit()
        log.info("%s failed: %s", action, reason)
        raise


def _verified_emails(result: entra.SignIn) -> list[str]:
    """Emails the token vouches for: the UPN, and `email` only when Entra marks its domain verified."""
    found = []
    for value, trusted in ((result.claims.get("preferred_username"), True),
                           (result.claims.get("email"), result.claims.get("xms_edov") in (True, "true", "1", 1))):
        if trusted and isinstance(value, str):
            try:
                found.append(normalise_email(value))
            except InvalidInput:
                pass
    return found


def _org_emails(org: Organization, result: entra.SignIn) -> list[str]:
    domains = {d.name for d in org.domains}
    return [e for e in _verified_emails(result) if e.rpartition("@")[2] in domains]


def _sso_sign_in(org: Organization, result: entra.SignIn) -> User:
    if not org.sso_active or org.tenant_id is None:
        raise NotAllowed("Single sign-on is not active for your organisation any more. Sign in with your password.")
    if result.tenant_id != org.tenant_id:
        raise NotAllowed("You signed in with a Microsoft account of another organisation. "
                         "Sign in again with your account of " + org.name + ".", title="Wrong organisation")
    user = _user_by_identity(result.tenant_id, result.object_id)
    if user is None:
        user = _link_or_create(org, result)
    elif user.organization_id != org.id:
        raise NotAllowed("Your Microsoft account belongs to another organisation in this portal.")
    user.last_sign_in_at = utcnow()
    sid_hash = start_session(user, "sso")
    store_profile(user, result, sid_hash)
    record("sign_in", "success", org=org, actor=user, detail="sso")
    db.session.commit()
    return user


def _user_by_identity(tid: str, oid: str) -> User | None:
    return db.session.execute(
        db.select(User).where(User.tenant_id == tid, User.object_id == oid)).scalar_one_or_none()


def _link_or_create(org: Organization, result: entra.SignIn) -> User:
    """First SSO sign-in: link an existing account of the organisation by verified email, else create one."""
    for email in _org_emails(org, result):
        for existing in users_by_email(email, org):
            if existing.object_id is None:
                existing.tenant_id, existing.object_id = result.tenant_id, result.object_id
                record("identity_linked", "success", org=org, actor=existing)
                return existing
    # The email comes from Microsoft: store_profile keeps it only if the organisation keeps copies.
    user = User(organization=org, role="member", tenant_id=result.tenant_id, object_id=result.object_id,
                email_hmac=b"", email_enc=b"")
    db.session.add(user)
    db.session.flush()  # the session row about to be written needs the user's id
    record("user_created", "success", org=org, actor=user, detail="sso")
    return user


def normalise_or_raw(value: str) -> str:
    try:
        return normalise_email(value)
    except InvalidInput:
        return value


def _activate_sso(org: Organization, result: entra.SignIn, actor: User | None,
                  pending: dict[str, Any]) -> SsoOutcome:
    lock_organization(org)
    if actor is None or actor.id != pending.get("actor_id") or not actor.is_admin or actor.organization_id != org.id:
        raise NotAllowed("Only the administrator who started the activation can finish it.")
    if org.tenant_id and org.tenant_id != result.tenant_id:
        raise NotAllowed("This organisation is bound to another Microsoft tenant. Deactivate SSO first.",
                         title="Different tenant")
    other = db.session.execute(db.select(Organization).where(Organization.tenant_id == result.tenant_id,
                                                             Organization.id != org.id)).scalar_one_or_none()
    if other is not None:
        # The page names no other customer; the operator's log says which organisation holds the tenant.
        log.warning("SSO activation for organisation %r (id %s) refused: tenant %s is bound to organisation %r (id %s)",
                    org.name, org.id, result.tenant_id, other.name, other.id)
        raise NotAllowed("This Microsoft tenant cannot be connected. Contact the portal's operator.",
                         title="Tenant cannot be connected")
    if not _org_emails(org, result):
        raise NotAllowed(
            "The Microsoft account you signed in with does not have a verified email in one of "
            f"the domains of {org.name}, so it cannot prove the tenant belongs to {org.name}. Nothing was changed.",
            title="Account does not match the organisation",
            hint="Sign in with your work account whose email ends in one of the organisation's domains.")
    # Any verified account of the organisation proves the tenant; only the admin's own is linked to the admin.
    own = (actor.tenant_id, actor.object_id) == (result.tenant_id, result.object_id) or (
        actor.object_id is None and normalise_or_raw(user_email(actor)) in _org_emails(org, result))
    holder = _user_by_identity(result.tenant_id, result.object_id)
    if own and holder is not None and holder.id != actor.id:
        raise NotAllowed("That Microsoft account is already linked to another user of this portal.")
    first_binding = bind_tenant(org, result.tenant_id)
    org.sso_active = True
    org.sso_activated_at = utcnow()
    org.sso_activated_by_id = actor.id
    if own:
        actor.tenant_id, actor.object_id = result.tenant_id, result.object_id
        store_profile(actor, result, current_sid_hash())
    if first_binding:
        record("tenant_bound", "success", org=org, actor=actor, detail=result.tenant_id)
    record("sso_activate", "success", org=org, actor=actor, detail="" if own else "account_not_linked")
    db.session.commit()
    return SsoOutcome(actor, None if own else _org_emails(org, result)[0])


def deactivate_sso(org: Organization, actor: Actor, *, via: str = "settings") -> None:
    """Turn SSO off and unbind the tenant; SSO sessions of the organisation end. Password accounts keep working."""
    org.sso_active = False
    org.require_sso = False
    org.tenant_id = None
    org.sso_activated_at = None
    org.sso_activated_by_id = None
    org.admin_consent_at = None
    org.admin_consent_by_id = None
    user_ids = db.select(User.id).where(User.organization_id == org.id)
    sso_sessions = db.select(LoginSession.id).where(LoginSession.user_id.in_(user_ids), LoginSession.method == "sso")
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.session_id.in_(sso_sessions),
                                                      StoredProfile.kept.is_(False)))
    db.session.execute(db.delete(LoginSession).where(LoginSession.id.in_(sso_sessions)))
    record("sso_deactivate", "success", org=org, actor=actor, detail=via)
    db.session.commit()


# -- stored profiles ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileCopy:
    claims: dict[str, Any]
    read_at: datetime
    has_photo: bool
    kept: bool
    tenant_id: str | None
    object_id: str | None


def _profile_aad(user: User, field_name: str) -> bytes:
    return vault.aad("stored_profiles", user.tenant_id or "", user.object_id or "", field_name)


def store_profile(user: User, result: entra.SignIn, sid_hash: str | None) -> None:
    """Keep the profile read at sign-in, encrypted; only for this session when the organisation keeps no copy."""
    v = vault.get_vault()
    if user.id is None:
        db.session.flush()
    row = db.session.get(StoredProfile, user.id) or StoredProfile(user_id=user.id)
    row.data_enc = v.encrypt_json(result.profile, _profile_aad(user, "profile"))
    row.photo_enc = v.encrypt(result.photo, _profile_aad(user, "photo")) if result.photo else None
    row.read_at = utcnow()
    row.kept = bool(user.organization.store_profiles)
    row.session_id = None if row.kept else sid_hash
    db.session.add(row)
    _keep_or_forget_email(user, result, row.kept)


# The profile page's read: the columns it shows, without the photo blob, and no ORM object to build.
_profiles = StoredProfile.__table__
_PROFILE_COPY = (select(_profiles.c.data_enc, _profiles.c.read_at, _profiles.c.kept,
                        _profiles.c.photo_enc.is_not(None).label("has_photo"))
                 .where(_profiles.c.user_id == bindparam("user_id")))
_PROFILE_PHOTO = select(_profiles.c.photo_enc).where(_profiles.c.user_id == bindparam("user_id"))


def profile_of(user: User) -> ProfileCopy | None:
    row = db.session.execute(_PROFILE_COPY, {"user_id": user.id}).first()
    if row is None:
        return None
    claims = _open_json(row.data_enc, _profile_aad(user, "profile"), user, "profile")
    return ProfileCopy(claims=claims, read_at=row.read_at, has_photo=row.has_photo, kept=row.kept,
                       tenant_id=user.tenant_id, object_id=user.object_id)


def photo_of(user: User) -> tuple[bytes, str] | None:
    blob = db.session.execute(_PROFILE_PHOTO, {"user_id": user.id}).scalar()
    if blob is None:
        return None
    data = _open(blob, _profile_aad(user, "photo"), user, "photo")
    kind = entra.photo_type(data)
    # The same cap as when it was read: a bigger blob was not written by us.
    return (data, kind) if kind and len(data) <= entra.MAX_PHOTO else None


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


# -- personal data protection -------------------------------------------------------------------
# The organisation's "store a copy" setting, a user's export and deletion of their data, the admin
# purge, the sweep of abandoned sessions and key rotation.

class StoredDataUnreadable(PortalError):
    status = 500
    title = "Stored data cannot be read"


def _open(blob: bytes, aad: bytes, user: User, what: str) -> bytes:
    """Decrypt a user's blob; a failure is logged (key id only) and shown as a page, the row is left alone."""
    try:
        return vault.get_vault().decrypt(blob, aad)
    except vault.DecryptError as e:
        raise _unreadable(user, what, e) from None


def _open_json(blob: bytes, aad: bytes, user: User, what: str) -> Any:
    try:
        return vault.get_vault().decrypt_json(blob, aad)
    except vault.DecryptError as e:
        raise _unreadable(user, what, e) from None


def _unreadable(user: User, what: str, e: vault.DecryptError) -> StoredDataUnreadable:
    log.error("Stored %s of user %s cannot be decrypted: %s", what, user.id, e)
    return StoredDataUnreadable(
        "Part of what the portal stores about you cannot be decrypted, so it cannot be shown. "
        "It was left unchanged for the portal's operator to look at.",
        hint="Your administrator can check the encryption keys. You can also delete your stored copy "
             "(Profile → Delete my stored copy); a new one is read at your next Microsoft sign-in.")


def _microsoft_only(user: User) -> bool:
    """An account that exists only through Microsoft: no password, so its email is Microsoft's data too."""
    return user.password_hash is None and user.object_id is not None


def _keep_or_forget_email(user: User, result: entra.SignIn, kept: bool) -> None:
    """Keep a Microsoft-only user's verified email (in the organisation's domains) only where the organisation
    keeps copies; else it lives in the session's profile copy and goes with it. Graph's `mail` is anyone's
    to set, so it is profile data only: never stored here, shown as the user or indexed."""
    if not _microsoft_only(user):
        return  # a password account's email is its sign-in name, given by an admin
    verified = _org_emails(user.organization, result)
    if not kept or not verified:
        user.email_enc, user.email_hmac = b"", b""
    elif user.email_hmac != vault.get_vault().blind_index(verified[0]):
        _set_email(user, verified[0])


def _email_from_copy(user: User) -> str:
    """A session-only copy's UPN when it is in the organisation's domains (organisations that keep no copies)."""
    copy = profile_of(user)
    if copy is None or copy.kept:
        return ""
    upn = normalise_or_raw(str(copy.claims.get("userPrincipalName") or ""))
    return upn if upn.rpartition("@")[2] in {d.name for d in user.organization.domains} else ""


def scrub_deleted() -> None:
    """SQLite in WAL mode keeps old page versions in the -wal file: checkpoint it away after deleting personal data."""
    if db.engine.dialect.name == "sqlite":
        db.session.execute(db.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        db.session.commit()


def _forget_copies(user_ids: Any, *, kept_only: bool) -> int:
    """Delete the profile copies (and Microsoft-only emails) of the users `user_ids` selects; return copies deleted."""
    query = db.delete(StoredProfile).where(StoredProfile.user_id.in_(user_ids))
    if kept_only:
        query = query.where(StoredProfile.kept.is_(True))
    deleted = db.session.execute(query, execution_options={"synchronize_session": False}).rowcount
    db.session.execute(
        db.update(User).where(User.id.in_(user_ids), User.password_hash.is_(None), User.object_id.is_not(None))
        .values(email_enc=b"", email_hmac=b""), execution_options={"synchronize_session": False})
    db.session.expire_all()  # the bulk statements bypassed objects already loaded
    return deleted or 0


def set_store_profiles(org: Organization, keep: bool, actor: User) -> int:
    """Change "Store an encrypted copy of user profiles"; turning it off deletes the stored copies now."""
    if bool(org.store_profiles) == keep:
        return 0
    org.store_profiles = keep
    deleted = 0
    if not keep:
        # Copies held for live sessions stay until those sessions end, as the setting promises.
        deleted = _forget_copies(db.select(User.id).where(User.organization_id == org.id), kept_only=True)
    record("store_profiles", "success", org=org, actor=actor,
           detail=f"{'on' if keep else 'off'}; deleted {deleted}")
    db.session.commit()
    scrub_deleted()
    log.info("Organisation %s: store_profiles %s, %d copies deleted", org.id, keep, deleted)
    return deleted


def purge_profile_copies(org: Organization, actor: User) -> int:
    """An admin deletes every profile copy of the organisation; return how many were deleted."""
    deleted = _forget_copies(db.select(User.id).where(User.organization_id == org.id), kept_only=False)
    record("profiles_purged", "success", org=org, actor=actor, detail=f"deleted {deleted}")
    db.session.commit()
    scrub_deleted()
    return deleted


def delete_stored_copy(user: User) -> bool:
    """A user deletes their own profile copy and photo; return whether there was one."""
    deleted = _forget_copies(db.select(User.id).where(User.id == user.id), kept_only=False)
    record("profile_deleted", "success", org=user.organization, actor=user, detail="by the user")
    db.session.commit()
    scrub_deleted()
    return bool(deleted)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def export_user_data(user: User) -> dict[str, Any]:
    """Everything the portal stores about `user`, decrypted, for "Download my data" (the export is audited)."""
    email = _open(user.email_enc, _email_aad(user), user, "email").decode() if user.email_enc else None
    profile = None
    row = db.session.get(StoredProfile, user.id)
    if row is not None:
        photo = _open(row.photo_enc, _profile_aad(user, "photo"), user, "photo") if row.photo_enc else None
        profile = {
            "read_from_microsoft_at": _iso(row.read_at),
            "kept_after_sign_out": row.kept,
            "claims": _open_json(row.data_enc, _profile_aad(user, "profile"), user, "profile"),
            "photo": None if photo is None else {"content_type": entra.photo_type(photo),
                                                 "base64": base64.b64encode(photo).decode("ascii")},
        }
    record("data_export", "success", org=user.organization, actor=user)  # only once everything decrypted
    db.session.commit()
    sessions = db.session.execute(db.select(LoginSession).where(LoginSession.user_id == user.id)
                                  .order_by(LoginSession.created_at)).scalars()
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.actor_id == user.id)
                                .order_by(AuditEvent.id)).scalars()
    return {
        "exported_at": _iso(utcnow()),
        "account": {
            "organisation": user.organization.name, "role": user.role, "email": email,
            "has_password": user.password_hash is not None, "break_glass": user.break_glass,
            "tenant_id": user.tenant_id, "object_id": user.object_id,
            "created_at": _iso(user.created_at), "last_sign_in_at": _iso(user.last_sign_in_at),
        },
        "stored_profile": profile,
        "sessions": [{"method": s.method, "started_at": _iso(s.created_at), "last_seen_at": _iso(s.last_seen_at)}
                     for s in sessions],
        "audit_events": [{"at": _iso(e.at), "action": e.action, "outcome": e.outcome, "detail": e.detail,
                          "ip": e.ip} for e in events],
    }


def sweep_expired_sessions() -> tuple[int, int]:
    """Delete sessions past their idle or absolute limit, profile copies no live session holds and expired
    sign-in throttle counts (caller commits).

    Returns (sessions, copies) deleted. Runs at every sign-in and as `flask --app app sweep-sessions`.
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


@dataclass
class RotationCount:
    reencrypted: int = 0
    current: int = 0
    unreadable: int = 0


def rotation_total() -> int:
    """How many rows `rotate_keys` looks at (for a progress bar)."""
    return sum(db.session.scalar(db.select(db.func.count()).select_from(m)) or 0
               for m in (User, StoredProfile, VaultCheck))


def rotate_keys(batch_size: int = 200, progress: Callable[[int], None] | None = None) -> dict[str, RotationCount]:
    """Re-encrypt every row under the newest key, committing a batch at a time.

    Rows already under the newest key are skipped, so an interrupted run can simply be started again.
    A row that cannot be decrypted is left unchanged and counted; the key check value moves to the
    newest key last and only when every row could be read, so start-up keeps refusing a key ring
    that lacks a key still in use.
    """
    v = vault.get_vault()
    report = {"users": RotationCount(), "stored_profiles": RotationCount(), "vault_check": RotationCount()}
    step = progress or (lambda n: None)

    def rotate_user(row: Any) -> str:
        user = row.User
        if not user.email_enc or v.is_current(user.email_enc):
            return "current"
        email = v.decrypt(user.email_enc, _email_aad(user))
        user.email_enc = v.encrypt(email, _email_aad(user))
        user.email_hmac = v.blind_index(email.decode())
        return "reencrypted"

    def rotate_profile(found: Any) -> str:
        row, user = found.StoredProfile, found.User
        blobs = {"data_enc": (row.data_enc, "profile"), "photo_enc": (row.photo_enc, "photo")}
        stale = {k: b for k, b in blobs.items() if b[0] is not None and not v.is_current(b[0])}
        if not stale:
            return "current"
        fresh = {k: v.reencrypt(blob, _profile_aad(user, name)) for k, (blob, name) in stale.items()}
        for key, blob in fresh.items():  # only after every blob of the row decrypted
            setattr(row, key, blob)
        return "reencrypted"

    def batches(query: Any, key: Any):
        last = None
        while True:
            q = query if last is None else query.where(key > last)
            rows = list(db.session.execute(q.order_by(key).limit(batch_size)).all())
            if not rows:
                return
            yield rows
            last = rows[-1][-1]

    def run(table: str, query: Any, key: Any, rotate: Callable[[Any], str]) -> None:
        # Keyset pagination on the primary key (the last column), so committed batches never shift.
        for rows in batches(query, key):
            for row in rows:
                try:
                    outcome = rotate(row)
                except vault.DecryptError as e:
                    log.error("Key rotation: %s row %s cannot be decrypted and was left unchanged: %s",
                              table, row[-1], e)
                    outcome = "unreadable"
                setattr(report[table], outcome, getattr(report[table], outcome) + 1)
            db.session.commit()
            step(len(rows))

    run("users", db.select(User, User.id), User.id, rotate_user)
    run("stored_profiles", db.select(StoredProfile, User, StoredProfile.user_id).join(
        User, User.id == StoredProfile.user_id), StoredProfile.user_id, rotate_profile)
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


# -- admin consent, SSO enforcement and the audit log -------------------------------------------

AUDIT_PAGE_SIZE = 25
# How the SECURITY tab names actions; unknown codes are shown as they are.
AUDIT_ACTIONS = {
    "sign_in": "Sign-in", "sso_activate": "SSO activated", "sso_deactivate": "SSO deactivated",
    "tenant_bound": "Tenant bound", "identity_linked": "Microsoft account linked", "user_created": "User created",
    "admin_consent": "Admin consent", "require_sso": "Require single sign-on",
    "profile_stored": "Profile copy stored", "profile_deleted": "Profile copy deleted",
    "org_created": "Organisation created", "org_renamed": "Organisation renamed", "domain_added": "Domain added",
    "domain_removed": "Domain removed", "password_reset": "Password reset", "org_deleted": "Organisation deleted",
    "profiles_purged": "All profile copies deleted", "store_profiles": "Stored profiles setting",
    "data_export": "Data downloaded",
}
# The audit page's words for the fixed detail codes (the CLI's JSON keeps the codes).
AUDIT_DETAILS = {
    "password": "with a password", "sso": "with Microsoft", "bad_password": "wrong email or password",
    "sso_required": "single sign-on is required", "sso_not_active": "single sign-on is off",
    "settings": "in Settings", "cli": "by the operator (CLI)",
}
AUDIT_OUTCOMES = {"success": "Succeeded", "failure": "Failed"}


def _refused(reason: str, message: str, *, title: str | None = None, status: int = 403) -> PortalError:
    """A NotAllowed carrying a reason code for the audit log (like EntraError.reason)."""
    error = NotAllowed(message, title=title, status=status)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def _require_admin(org: Organization | None, actor: User | None, what: str) -> None:
    """Only the organisation's own admins; refusals are logged with ids only, no personal data."""
    if org is None or actor is None or not actor.is_admin or actor.organization_id != org.id:
        log.warning("Refused %s for user %s", what, actor.id if actor is not None else "anonymous")
        raise NotAllowed("Only administrators of the organisation can do this.")


def begin_admin_consent(org: Organization, actor: User) -> str:
    """Keep a single-use state bound to the organisation, its tenant and the admin; return Entra's admin-consent URL."""
    _require_admin(org, actor, "admin consent")
    if not org.sso_active or not org.tenant_id:
        raise InvalidInput("Activate single sign-on first: admin consent is granted for the Microsoft tenant "
                           f"{org.name} is bound to.", status=409, title="Single sign-on is off")
    state = secrets.token_urlsafe(32)
    url = entra.client().admin_consent_url(org.tenant_id, state)
    pending = {k: v for k, v in session.get("admin_consents", {}).items() if time_ok(v)}
    while len(pending) >= MAX_PENDING_FLOWS:
        pending.pop(min(pending, key=lambda k: pending[k]["started"]))
    pending[state] = {"org_id": org.id, "tenant_id": org.tenant_id, "actor_id": actor.id,
                      "started": int(utcnow().timestamp())}
    session["admin_consents"] = pending
    return url


def take_admin_consent(states: list[str]) -> dict[str, Any]:
    """Remove and return the admin-consent request a callback's state names: single use, 10 minutes, this browser."""
    waiting = dict(session.get("admin_consents", {}))
    state = states[0] if len(states) == 1 and states[0] and len(states[0]) <= 128 else None
    pending = waiting.pop(state, None) if state else None
    session["admin_consents"] = waiting  # gone before anything else happens, so it cannot be replayed
    if pending is None:
        log.warning("Admin-consent callback with a missing, unknown or used state")
        raise InvalidInput("This admin-consent answer was not asked for in this browser, or was used already. "
                           "Nothing was recorded. Start again from Settings → SECURITY.", title="Start again")
    if not time_ok(pending):
        log.warning("Admin-consent callback with an expired state")
        raise InvalidInput("This admin-consent request took longer than 10 minutes and expired. Nothing was "
                           "recorded. Start again from Settings → SECURITY.", title="Start again")
    return pending


def complete_admin_consent(pending: dict[str, Any], params: dict[str, str], actor: User | None) -> Organization:
    """Record tenant-wide consent if Entra confirms it for the bound tenant; otherwise record the failure only."""
    org = db.session.get(Organization, pending.get("org_id") or 0)
    if actor is None or actor.id != pending.get("actor_id"):
        log.warning("Admin-consent callback for user %s finished by user %s", pending.get("actor_id"),
                    actor.id if actor is not None else "anonymous")
        raise NotAllowed("Only the administrator who asked for admin consent can finish it. Nothing was recorded.")
    _require_admin(org, actor, "admin consent")
    try:
        if not org.sso_active or org.tenant_id != pending.get("tenant_id"):
            raise _refused("tenant_changed", "Single sign-on was turned off or bound to another tenant meanwhile. "
                           "Nothing was recorded. Start again from Settings → SECURITY.", title="Start again")
        answer = entra.parse_admin_consent(params)  # Entra's error first: it sends admin_consent=True on errors too
        if answer.tenant_hint != org.tenant_id:
            # The tenant parameter is unsigned: it may only confirm the tenant we sent the admin to.
            raise _refused("tenant_mismatch", f"Microsoft's answer is not for the tenant {org.name} is bound to, "
                           "so nothing was recorded.", title="Different tenant")
    except (entra.EntraError, PortalError) as e:
        db.session.rollback()
        reason = getattr(e, "reason", None) or type(e).__name__
        record("admin_consent", "failure", org=org, actor=actor, detail=reason)
        db.session.commit()
        log.info("Admin consent failed: %s", reason)
        raise
    org.admin_consent_at = utcnow()
    org.admin_consent_by_id = actor.id
    record("admin_consent", "success", org=org, actor=actor, detail=org.tenant_id or "")
    db.session.commit()
    return org


def set_require_sso(org: Organization, actor: User, required: bool) -> bool:
    """Turn SSO enforcement on or off; on needs SSO active and ends other non-break-glass password sessions."""
    _require_admin(org, actor, "SSO enforcement")
    if required and not org.sso_active:
        record("require_sso", "failure", org=org, actor=actor, detail="sso_not_active")
        db.session.commit()
        raise InvalidInput("Activate single sign-on first: requiring it while it is off would lock members out.",
                           status=409, title="Single sign-on is off")
    if org.require_sso == required:
        return False
    org.require_sso = required
    detail = "on" if required else "off"
    if required:
        # A password session started before enforcement would otherwise outlive it by hours.
        users = db.select(User.id).where(User.organization_id == org.id, User.break_glass.is_(False))
        query = db.delete(LoginSession).where(LoginSession.user_id.in_(users), LoginSession.method == "password")
        sid_hash = current_sid_hash()
        if sid_hash is not None:
            query = query.where(LoginSession.id != sid_hash)
        ended = db.session.execute(query).rowcount
        detail += f" password_sessions_ended={ended}"
    record("require_sso", "success", org=org, actor=actor, detail=detail)
    db.session.commit()
    return True


def break_glass_count(org: Organization) -> int:
    """Accounts of the organisation that may still use a password while SSO is required."""
    return db.session.scalar(db.select(db.func.count()).select_from(User).where(
        User.organization_id == org.id, User.break_glass.is_(True), User.password_hash.is_not(None))) or 0


@dataclass(frozen=True)
class AuditEntry:
    """One audit event as pages and the CLI show it."""

    time: datetime
    actor: str | None
    action: str
    outcome: str
    detail: str
    ip: str | None

    @property
    def label(self) -> str:
        return AUDIT_ACTIONS.get(self.action, self.action.replace("_", " ").capitalize())

    @property
    def detail_label(self) -> str:
        """The detail in words: known codes from AUDIT_DETAILS, Microsoft's AADSTS codes and other codes spelled out."""
        detail = self.detail
        if detail in AUDIT_DETAILS:
            return AUDIT_DETAILS[detail]
        if detail.startswith("entra_"):
            return "Microsoft error " + detail[len("entra_"):]
        if re.fullmatch(r"[a-z]+(_[a-z]+)+", detail):
            return detail.replace("_", " ")
        if re.fullmatch(r"(?:[A-Z][a-z]+){2,}", detail):  # an error class's name, e.g. NotAllowed
            return " ".join(re.findall(r"[A-Z][a-z]+", detail)).capitalize()
        return detail

    @property
    def outcome_label(self) -> str:
        return AUDIT_OUTCOMES.get(self.outcome, self.outcome)

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"), "actor": self.actor, "action": self.action,
                "outcome": self.outcome, "detail": self.detail, "ip": self.ip}


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    page: int
    pages: int
    total: int


def _audit_entries(events: Iterable[AuditEvent]) -> Iterable[AuditEntry]:
    names: dict[int, str] = {}  # decrypt each actor's email once
    for entry in events:
        actor = OPERATOR_NAME if entry.by_operator else None
        if entry.actor_id is not None and entry.actor is not None:
            if entry.actor_id not in names:
                names[entry.actor_id] = display_user(entry.actor)
            actor = names[entry.actor_id]
        yield AuditEntry(time=entry.at, actor=actor, action=entry.action, outcome=entry.outcome,
                         detail=entry.detail, ip=entry.ip)


def audit_page(org: Organization, page: str | int = 1) -> AuditPage:
    """One page of the organisation's audit log, newest first; a page that does not exist is a 404."""
    total = db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)
                              .where(AuditEvent.organization_id == org.id)) or 0
    pages = max(1, -(-total // AUDIT_PAGE_SIZE))
    number = parse_number(str(page)) or 0
    if not 1 <= number <= pages:
        raise InvalidInput(f"The audit log has {pages} page{'s' if pages > 1 else ''}.", status=404,
                           title="No such page")
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.organization_id == org.id)
                                .order_by(AuditEvent.id.desc())
                                .offset((number - 1) * AUDIT_PAGE_SIZE).limit(AUDIT_PAGE_SIZE)).scalars()
    return AuditPage(entries=list(_audit_entries(events)), page=number, pages=pages, total=total)


def audit_log(org: Organization) -> Iterable[AuditEntry]:
    """The organisation's whole audit log, oldest first, streamed in batches (for the CLI)."""
    events = db.session.execute(db.select(AuditEvent).where(AuditEvent.organization_id == org.id)
                                .order_by(AuditEvent.id).execution_options(yield_per=500)).scalars()
    return _audit_entries(events)


# -- hardening: sign-in throttle keys -----------------------------------------------------------

def _throttle_hash(value: str) -> str:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"throttle:" + value.encode(), hashlib.sha256).hexdigest()[:32]


def _address_group(address: str | None) -> str:
    """The client as the throttles count it: an IPv4 address, or the /64 of an IPv6 one (one home or host's
    privacy addresses share a /64, so counting each address alone would let one client rotate through them)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "-"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def account_key(email: str) -> str:
    """A keyed hash of a normalised email, for the failed-password counts (the database holds no email)."""
    return _throttle_hash(email)


def address_key(address: str | None) -> str:
    """A keyed hash of a client (see _address_group), for rate limits: the counters in the database hold no IP
    address."""
    return _throttle_hash("address:" + _address_group(address))


# -- several workers at once --------------------------------------------------------------------
# Workers share nothing but the database, so parallel requests for the same identity or organisation
# are settled there: unique keys decide who inserts, a conditional UPDATE decides who binds.

RACE_ATTEMPTS = 3
T = TypeVar("T")


def settle_races(unit: Callable[[], T]) -> T:
    """Run a unit of work; when a parallel request inserted the same row first, roll back and run it again.

    The second run finds the winner's rows (user, stored profile) and continues with them, so a parallel
    first sign-in of the same account ends signed in instead of failing.
    """
    for _ in range(RACE_ATTEMPTS):
        try:
            return unit()
        except IntegrityError as e:
            db.session.rollback()
            log.info("Parallel write settled, running again: %s", type(e.orig).__name__)
    raise SignInFailed("Another sign-in of the same account finished at the same moment. Sign in again.",
                       status=409, title="Sign in again")


def lock_organization(org: Organization) -> None:
    """Take the organisation's row lock first (PostgreSQL), so parallel activations queue instead of deadlocking."""
    db.session.execute(db.select(Organization).where(Organization.id == org.id).with_for_update()
                       .execution_options(populate_existing=True))


def bind_tenant(org: Organization, tenant_id: str) -> bool:
    """Bind the organisation to the tenant unless it is bound already; True for the one request that bound it."""
    bound = db.session.execute(
        db.update(Organization).where(Organization.id == org.id, Organization.tenant_id.is_(None))
        .values(tenant_id=tenant_id).execution_options(synchronize_session=False)).rowcount == 1
    db.session.refresh(org, ["tenant_id"])  # the winner's value when a parallel activation bound it first
    if org.tenant_id != tenant_id:
        raise NotAllowed("This organisation is bound to another Microsoft tenant. Deactivate SSO first.",
                         title="Different tenant")
    return bound


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


# Every signed-in request runs this, so it is built once (building and cache-keying a statement costs more
# than running it). The session's times come as plain columns: the ORM builds one object, the user.
_SESSION_USER = (select(User, LoginSession.created_at, LoginSession.last_seen_at)
                 .join(LoginSession, LoginSession.user_id == User.id)
                 .where(LoginSession.id == bindparam("sid_hash")))


def login_session_with_user(sid_hash: str) -> tuple[User, datetime, datetime] | None:
    """The user of a server-side session and the session's (created_at, last_seen_at), in one query."""
    found = db.session.execute(_SESSION_USER, {"sid_hash": sid_hash}).first()
    return tuple(found) if found is not None else None
