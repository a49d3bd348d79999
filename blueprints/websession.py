"""The web side of a login session: the cookie, its rotation, the CSRF secret and Flask-Login.

The domain (domain/sessions.py) keeps the server-side rows and reads and writes the browser's pending state in the
mapping it is given; this module hands it Flask's session and does what only the web can.
"""
from __future__ import annotations

import functools

from flask import Flask, abort, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf.csrf import generate_csrf
from itsdangerous import URLSafeTimedSerializer

import entra
from domain import audit, sessions
from models import SessionUser, User


def init_app(app: Flask) -> None:
    """Flask-Login with the server-side session check, and the client address the audit log records."""
    manager = _LoginManager()
    manager.login_view = "auth.login"
    manager.login_message = "Please sign in to see that page."
    manager.login_message_category = "info"
    manager.session_protection = None  # sessions are checked server-side instead
    manager.user_loader(load_user)
    manager.init_app(app)
    app.session_interface = _CookieSessions()

    @app.before_request
    def audit_client() -> None:
        g._audit_client = audit.client_address.set(request.remote_addr)

    @app.teardown_request
    def audit_client_done(_error: BaseException | None) -> None:
        token = g.pop("_audit_client", None)
        if token is not None:
            audit.client_address.reset(token)


class _LoginManager(LoginManager):
    """Flask-Login, which hashed the client's address and user agent on every request before finding its session
    protection off (`session_protection = None`: sessions are checked server-side); a configured one still runs."""

    def _session_protection_failed(self) -> bool:
        if current_app.config.get("SESSION_PROTECTION", self.session_protection):
            return super()._session_protection_failed()
        return False


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, with its serializer built once per key set instead of twice per request."""

    @functools.lru_cache(maxsize=4)
    def _serializer(self, keys: tuple) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(list(keys), salt=self.salt, serializer=self.serializer,
                                      signer_kwargs={"key_derivation": self.key_derivation,
                                                     "digest_method": self.digest_method})

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        # itsdangerous wants the current key last
        return self._serializer((*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key))


def csrf_token() -> str:
    """Flask-WTF's generate_csrf for templates, with the signed token kept per session secret in this worker:
    tokens carry no expiry here (WTF_CSRF_TIME_LIMIT None), so signing it afresh for every page bought nothing."""
    cfg = current_app.config
    field = cfg["WTF_CSRF_FIELD_NAME"]
    token = g.get(field)
    if token is not None:  # this request's, already signed (a page prints it in each of its forms)
        return token
    raw = session.get(field)
    if cfg["WTF_CSRF_TIME_LIMIT"] is not None or not isinstance(raw, str):
        return generate_csrf()
    token = _signed_csrf(cfg.get("WTF_CSRF_SECRET_KEY") or current_app.secret_key, raw)
    setattr(g, field, token)  # where generate_csrf (and the forms' CSRF fields) find it for this request
    return token


@functools.lru_cache(maxsize=4096)
def _signed_csrf(key: str | bytes, raw: str) -> str:
    return URLSafeTimedSerializer(key, salt="wtf-csrf-token").dumps(raw)


def load_user(user_id: str) -> SessionUser | None:
    """Flask-Login's loader: the user only while their server-side session is alive (checked on every request)."""
    return sessions.session_user(session, user_id)


def user() -> User:
    """The signed-in user as the `User` the services take (`current_user` is the SessionUser the check read, or
    the User itself in the request that signed them in), read once a request."""
    signed_in = current_user._get_current_object()
    if isinstance(signed_in, User):
        return signed_in
    if "_portal_user" not in g:
        g._portal_user = sessions.user_of(signed_in)
        if g._portal_user is None:  # removed between the session check and now: signed out, as on the next page
            logout_user()
            abort(current_app.login_manager.unauthorized())
    return g._portal_user


def state() -> sessions.State:
    """The browser's session: where the domain keeps the session id and pending sign-ins."""
    return session


def current_sid_hash() -> str | None:
    return sessions.current_sid_hash(session)


def signed_in(user: User) -> None:
    """After a service started a session in the cleared cookie: make it permanent, give it a new CSRF secret and
    sign the user in with Flask-Login."""
    session.permanent = True
    # A new CSRF secret now, in the cookie this response sets: otherwise the first page after sign-in makes one
    # and sends the cookie again. The token Flask-WTF cached for this request belongs to the cleared session.
    g.pop(current_app.config["WTF_CSRF_FIELD_NAME"], None)
    generate_csrf()
    login_user(user)
    # Flask-Login's client fingerprint serves only its session protection, which is off (checked server-side):
    # 128 characters less in a cookie every request carries.
    session.pop("_id", None)


def sign_out() -> str | None:
    """End the session here; returns Microsoft's sign-out URL when the session came from Microsoft."""
    method = sessions.end_session(session)
    logout_user()
    session.clear()
    return entra.client().logout_url("/login") if method == "sso" else None
