"""The application factory: configuration layers, extensions, blueprints, CLI and error pages."""
from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlsplit

from flask import Flask, g, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix

import accounts
import commands
import entra
import throttles
from blueprints import auth, home, profile, settings

DEFAULT_AUTHORITY = "https://login.microsoftonline.com/organizations"
# Demo mode's app registration in the emulator; never valid at Microsoft.
DEMO_CLIENT_ID = "5f0d1c2e-0000-4000-8000-00000000d3e0"
# What the sign-in throttles count: the login prompt, password step, "Continue to Microsoft", callbacks.
SIGN_IN_ENDPOINTS = {("auth.login", "POST"), ("auth.password", "POST"), ("auth.sso_start", "POST"),
                     ("auth.callback", "GET"), ("auth.admin_consent_callback", "GET")}
WEAK_SECRETS = {"dev", "secret", "changeme", "change-me", "development", "test"}
# What a database that does not answer (or cannot write) raises: the portal's 503 page, never a 500.
DATABASE_DOWN = (OperationalError, InterfaceError)
CALLBACKS = {"auth.callback", "auth.admin_consent_callback"}
DATABASE_CONNECT_TIMEOUT = 5  # seconds; PostgreSQL, unless the URL sets connect_timeout

log = logging.getLogger(__name__)


class ConfigError(RuntimeError):
    """Start-up refused because the configuration is unsafe or incomplete."""


def create_app(test_config: Mapping[str, Any] | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the portal: defaults, then instance/config.py, then FLASK_* variables, then test_config."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY=None,
        SQLALCHEMY_DATABASE_URI=None,
        ENTRA_CLIENT_ID=None,
        ENTRA_CLIENT_SECRET=None,
        ENTRA_AUTHORITY=DEFAULT_AUTHORITY,
        GRAPH_ENDPOINT="https://graph.microsoft.com/v1.0",
        ENTRA_TIMEOUT=10.0,
        ENCRYPTION_KEYS=None,
        ENCRYPTION_KEY_FILE=None,
        DEMO_MODE=False,
        SESSION_IDLE_MINUTES=30,
        SESSION_MAX_HOURS=8,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_REFRESH_EACH_REQUEST=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # tokens live as long as the session
        PREFERRED_URL_SCHEME="https",
        # Behind a reverse proxy: how many proxies set X-Forwarded-For / -Proto (0 = trust none).
        PROXY_FIX_X_FOR=0,
        PROXY_FIX_X_PROTO=0,
        # Sign-in throttles (Flask-Limiter syntax), shared by the login prompt, password step,
        # "Continue to Microsoft" and the callback; per client IP and per account (both as keyed hashes).
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=throttles.SCHEME + "://",  # the portal's database: every worker counts together
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_SIGN_IN_PER_IP="60 per minute; 600 per hour",
        RATELIMIT_SIGN_IN_PER_ACCOUNT="10 per minute; 100 per hour",
    )
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    _finish_config(app)

    accounts.init_app(app)
    _wire_rate_limits(app)  # before CSRFProtect, so requests with a bad token are counted too
    CSRFProtect(app)
    if app.config["DEMO_MODE"]:
        _wire_emulator(app)

    for bp in (home.bp, auth.bp, settings.bp, profile.bp):
        app.register_blueprint(bp)
    commands.init_app(app)
    _register_error_pages(app)
    _register_security_headers(app)
    _wire_proxy_fix(app)
    with app.app_context():
        accounts.startup_check(create=bool(app.config["DEMO_MODE"]))
    return app


def _finish_config(app: Flask) -> None:
    """Fill derived settings and refuse to start on unsafe or missing ones."""
    cfg = app.config
    demo = bool(cfg["DEMO_MODE"])
    # A signed-in cookie lives as long as the longest session and is re-sent only when the session changes
    # (SESSION_REFRESH_EACH_REQUEST off): the server-side row enforces the idle and absolute timeouts.
    cfg["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=float(cfg["SESSION_MAX_HOURS"]))
    if not cfg["SQLALCHEMY_DATABASE_URI"]:
        cfg["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "portal.sqlite")
    uri = str(cfg["SQLALCHEMY_DATABASE_URI"])
    if not uri.startswith("sqlite"):
        # A server restarted under the portal leaves dead pooled connections: test each before use.
        options = {"pool_pre_ping": True, **cfg.get("SQLALCHEMY_ENGINE_OPTIONS", {})}
        if uri.startswith("postgresql") and "connect_timeout" not in uri:
            # A server that drops packets would hold each request for the system's TCP timeout (minutes).
            options["connect_args"] = {"connect_timeout": DATABASE_CONNECT_TIMEOUT, **options.get("connect_args", {})}
        cfg["SQLALCHEMY_ENGINE_OPTIONS"] = options
    secret = cfg["SECRET_KEY"]
    if not secret and (demo or app.debug):
        cfg["SECRET_KEY"] = _instance_secret(app, "secret_key")
    elif not secret or len(str(secret)) < 32 or str(secret).lower() in WEAK_SECRETS:
        raise ConfigError(
            "SECRET_KEY is missing or weak: set FLASK_SECRET_KEY to at least 32 random characters, "
            'e.g. python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    if demo:
        if cfg["ENTRA_CLIENT_ID"] or cfg["ENTRA_CLIENT_SECRET"]:
            raise ConfigError(
                "DEMO_MODE is on while real Entra settings (ENTRA_CLIENT_ID/ENTRA_CLIENT_SECRET) are given: "
                "choose one. Demo mode only talks to the built-in emulator."
            )
        if cfg["ENTRA_AUTHORITY"] != DEFAULT_AUTHORITY:
            raise ConfigError("DEMO_MODE uses the default ENTRA_AUTHORITY; remove the setting or leave demo mode.")
        cfg["ENTRA_CLIENT_ID"] = DEMO_CLIENT_ID
        cfg["ENTRA_CLIENT_SECRET"] = _instance_secret(app, "demo_client_secret")
        if not cfg["SERVER_NAME"]:
            cfg["SERVER_NAME"] = "127.0.0.1:5000"
        cfg["PREFERRED_URL_SCHEME"] = "http"
    elif not app.debug:
        # Outside demo and debug the cookie is HTTPS-only and host-locked.
        cfg["SESSION_COOKIE_SECURE"] = True
        cfg["SESSION_COOKIE_NAME"] = "__Host-portal_session"
    if cfg["RATELIMIT_STORAGE_URI"].startswith(throttles.SCHEME + ":") and cfg["RATELIMIT_STRATEGY"] != "moving-window":
        raise ConfigError(f"RATELIMIT_STORAGE_URI {throttles.SCHEME}:// counts with RATELIMIT_STRATEGY 'moving-window' "
                          "only; remove the strategy setting or choose another storage (memory://, redis://...).")
    if not demo:
        missing = [k for k in ("ENTRA_CLIENT_ID", "ENTRA_CLIENT_SECRET", "SERVER_NAME") if not cfg.get(k)]
        if missing:
            raise ConfigError(
                "Missing settings: " + ", ".join(missing) + ". Set them in instance/config.py or as FLASK_<NAME> "
                "environment variables (see the README), or set FLASK_DEMO_MODE=1 to try the portal with the emulator."
            )


def _instance_secret(app: Flask, name: str) -> str:
    """Read a random secret kept in instance/, creating it (mode 0600) on first use.

    Written whole under a temporary name, then linked into place: a worker starting at the same moment
    finds either no file or the complete one, never a half-written secret.
    """
    path = os.path.join(app.instance_path, name)
    if not os.path.exists(path):
        value = secrets.token_urlsafe(48)
        temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(value)
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process linked its secret first: use that one
        finally:
            os.unlink(temporary)
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _wire_emulator(app: Flask) -> None:
    """Demo mode: Microsoft's hosts are played by the in-repo emulator (the one place the portal imports it)."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from emulator import Emulator

    base = f"{app.config['PREFERRED_URL_SCHEME']}://{app.config['SERVER_NAME']}"
    emu = Emulator(
        os.path.join(app.instance_path, "emulator"),
        browser_url=base + "/_entra",
        clients={
            app.config["ENTRA_CLIENT_ID"]: {
                "secret": app.config["ENTRA_CLIENT_SECRET"],
                "redirect_uris": [base + entra.CALLBACK_PATH, base + entra.ADMIN_CONSENT_CALLBACK_PATH],
                "name": "Customer Portal (demo)",
            }
        },
    )
    emu.mount(entra.get_http(app))
    app.extensions["entra_emulator"] = emu
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_entra": emu.wsgi})


def _wire_rate_limits(app: Flask) -> None:
    """Throttle the sign-in endpoints per client IP and per account; one Limiter per app."""
    limiter = Limiter(lambda: accounts.address_key(get_remote_address()), app=app)

    @limiter.request_filter
    def not_a_sign_in() -> bool:
        # Every other request (page views, static files, GETs of the sign-in pages) leaves the limiter here,
        # before it resolves any limit or touches its storage.
        return (request.endpoint, request.method) not in SIGN_IN_ENDPOINTS

    limiter.shared_limit(lambda: app.config["RATELIMIT_SIGN_IN_PER_IP"], scope="sign-in-ip")(auth.bp)
    limiter.shared_limit(lambda: app.config["RATELIMIT_SIGN_IN_PER_ACCOUNT"], scope="sign-in-account",
                         key_func=lambda: auth.throttle_key() or "-",
                         exempt_when=lambda: auth.throttle_key() is None)(auth.bp)


def _wire_proxy_fix(app: Flask) -> None:
    """Trust X-Forwarded-For/-Proto from the configured number of proxies; never X-Forwarded-Host."""
    x_for, x_proto = int(app.config["PROXY_FIX_X_FOR"]), int(app.config["PROXY_FIX_X_PROTO"])
    if x_for or x_proto:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=x_for, x_proto=x_proto, x_host=0, x_port=0, x_prefix=0)


def _register_security_headers(app: Flask) -> None:
    """One hook for the browser-facing security headers of every portal response."""
    # Forms may lead (by redirect) to Microsoft's sign-in and sign-out pages; in demo mode those are ours.
    authority = urlsplit(app.config["ENTRA_AUTHORITY"])
    microsoft = "" if app.config["DEMO_MODE"] else f" {authority.scheme}://{authority.netloc}"
    csp = ("default-src 'self'; object-src 'none'; base-uri 'none'; "
           f"frame-ancestors 'none'; form-action 'self'{microsoft}")
    hsts = not (app.debug or app.config["DEMO_MODE"]) and app.config["PREFERRED_URL_SCHEME"] == "https"
    defaults = [("Content-Security-Policy", csp), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer"), ("Cross-Origin-Opener-Policy", "same-origin")]
    if hsts:
        defaults.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))
    defaults_by_key = [(name.lower(), name, value) for name, value in defaults]

    @app.after_request
    def security_headers(response):
        headers = response.headers
        # A view may set its own value; one pass over the headers instead of a search per default.
        present = {name.lower() for name, _ in headers}
        headers.extend([(name, value) for key, name, value in defaults_by_key if key not in present])
        # Signed-in pages, the callback, error pages and forms with CSRF tokens: nothing worth caching.
        if request.endpoint != "static":
            headers["Cache-Control"] = "no-store"
        return response


def _register_error_pages(app: Flask) -> None:
    """One template for every error status; domain failures carry their own status and words."""

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return render_template("error.html", status=e.code, title=e.name, message=e.description), e.code

    @app.errorhandler(SecurityError)
    def untrusted_host(e: SecurityError):
        # TRUSTED_HOSTS refused the Host header: no URLs can be built for it, so no page with links.
        return "Bad request: this host name is not served here.\n", 400, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(429)
    def too_many(e: HTTPException):
        message = "Too many sign-in attempts came from here or for this account. Wait a minute, then try again."
        return render_template("error.html", status=429, title="Too many attempts", message=message), 429

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError):
        log.warning("CSRF check failed: %s", e.description)
        message = "This form has expired or did not come from this site. Go back, reload the page and try again."
        return render_template("error.html", status=400, title="Form expired", message=message), 400

    @app.errorhandler(accounts.PortalError)
    @app.errorhandler(entra.EntraError)
    def portal_error(e):
        return render_template("error.html", status=e.status, title=e.title, message=e.message, hint=e.hint,
                               code=getattr(e, "code", None)), e.status

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_down(e: Exception):
        orig = getattr(e, "orig", None) or e  # the driver's words, without SQLAlchemy's statement and parameters
        log.warning("Database not answering (%s %r): %s: %s", request.method, request.path, type(orig).__name__,
                    (str(orig).splitlines() or [""])[0][:200])
        # Nothing on this page may ask the database again: not the limiter's header hook, not the user loader.
        for limiter in app.extensions.get("limiter", ()):
            limiter.context.reset()
        g._login_user = app.login_manager.anonymous_user()
        hint = ("Microsoft's part of your sign-in was done, but the portal could not finish it. Start the sign-in "
                "again in a minute." if request.endpoint in CALLBACKS else None)
        return render_template("error.html", status=503, title="Service unavailable",
                               message="The portal's database is not answering. Try again in a minute.",
                               hint=hint), 503, {"Retry-After": "60"}

    @app.errorhandler(500)
    def server_error(e):
        if isinstance(getattr(e, "original_exception", None), DATABASE_DOWN):  # raised outside a view's handlers
            return database_down(e.original_exception)
        return render_template("error.html", status=500, title="Something went wrong",
                               message="The portal could not finish this request. Nothing was changed."), 500
