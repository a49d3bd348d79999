"""The application factory: configuration layers, extensions, blueprints, CLI and error pages."""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlsplit

import click
from flask import Flask, g, has_request_context, render_template, request, url_for
from flask.cli import FlaskGroup
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect, same_origin
from limits.strategies import FixedWindowRateLimiter, RateLimiter
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix

import extensions
from domain import errors, throttling
import commands
import configuration
import demo
import entra
import throttles
import hashlib

from blueprints import auth, home, profile, scim, settings, websession

ConfigError = configuration.ConfigError
# What a database that does not answer (or cannot write) raises: the portal's 503 page, never a 500.
DATABASE_DOWN = (OperationalError, InterfaceError)
DATABASE_CONNECT_TIMEOUT = 5  # seconds; PostgreSQL, unless the URL sets connect_timeout

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the portal: defaults, then instance/config.py, then FLASK_* variables, then test_config."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    configuration.load(app, test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    try:
        configuration.check(app)
        _finish_config(app)
        _build(app)
    except Exception as e:
        failure = commands.describe_failure(e)
        if failure is None or click.get_current_context(silent=True) is None:
            raise
        if isinstance(click.get_current_context().command, FlaskGroup):
            # `flask --app app --help`, `generate-key`, `check-config`... work before the portal is configured;
            # the other commands print this one line.
            return commands.unconfigured_app(app, failure)
        raise click.ClickException(failure) from None  # `flask run`, `flask shell`: one line, exit 1
    # The demo command serves an app whose SERVER_NAME follows its --host and --port.
    app.extensions["portal_rebuild"] = lambda overrides: create_app({**(test_config or {}), **overrides},
                                                                     instance_path=app.instance_path)
    return app


def _build(app: Flask) -> None:
    extensions.init_app(app)
    websession.init_app(app)
    _wire_rate_limits(app)  # before CSRFProtect, so requests with a bad token count per IP too
    _wire_csrf(app)
    if app.config["DEMO_MODE"]:
        demo.wire(app)

    for bp in (home.bp, auth.bp, settings.bp, profile.bp, scim.bp):
        app.register_blueprint(bp)
    commands.init_app(app)
    _register_error_pages(app)
    _register_security_headers(app)
    _wire_template_urls(app)
    _wire_proxy_fix(app)
    if app.config["DEMO_MODE"]:
        demo.loopback_only(app)  # outermost: the socket's peer, before ProxyFix
    with app.app_context():
        extensions.startup_check(create=bool(app.config["DEMO_MODE"]))


def _finish_config(app: Flask) -> None:
    """Fill derived settings (the checks in configuration.py have passed)."""
    cfg = app.config
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
    if cfg["DEMO_MODE"]:
        demo.configure(app)
    else:
        # Outside demo mode the cookie is HTTPS-only and host-locked, debug or not.
        cfg["SESSION_COOKIE_SECURE"] = True
        cfg["SESSION_COOKIE_NAME"] = "__Host-portal_session"
    cfg["PORTAL_NAME"] = cfg["PORTAL_NAME"].strip()


class _Limiter(Limiter):
    """Flask-Limiter for the sign-in steps and the SCIM endpoint only, counting a request's limits in one transaction
    (throttles.counting_together). The SCIM endpoint counts with a fixed window: one count per token, where the moving
    window keeps (and counts) a row per request — tens of thousands in an initial provisioning cycle."""

    _scim_strategy: RateLimiter | None = None  # while the limits are enabled

    def init_app(self, app: Flask) -> None:
        super().init_app(app)
        if self.enabled:
            self._scim_strategy = FixedWindowRateLimiter(self.storage)

    @property
    def limiter(self) -> RateLimiter:
        # Flask-Limiter asks for the strategy at each count and for the headers: the SCIM endpoint's is its own
        # (not while Flask-Limiter falls back to counting in memory: that strategy is the fallback's).
        strategy, scim_strategy = super().limiter, self._scim_strategy
        if (scim_strategy is not None and strategy.storage is scim_strategy.storage and has_request_context()
                and request.blueprint == "scim"):
            return scim_strategy
        return strategy

    def _check_request_limit(self, *args, **kwargs):
        # Every other request (page views, static files, GETs of the sign-in pages) leaves here, before Flask-Limiter
        # resolves any limit or touches its storage; sign-in steps and Entra's SCIM calls are counted.
        if (request.endpoint, request.method) not in auth.SIGN_IN_ENDPOINTS and request.blueprint != "scim":
            return None
        with throttles.counting_together():
            return super()._check_request_limit(*args, **kwargs)


def _wire_rate_limits(app: Flask) -> None:
    """Throttle the sign-in endpoints per client IP; one Limiter per app (accounts counts failed password checks
    per account and client with it, in the view, where a check is known to have failed)."""
    limiter = _Limiter(lambda: throttling.address_key(get_remote_address()), app=app)
    limiter.shared_limit(lambda: app.config["RATELIMIT_SIGN_IN_PER_IP"], scope="sign-in-ip")(auth.bp)
    limiter.shared_limit(lambda: app.config["RATELIMIT_PASSWORD_PER_IP"], scope="password-ip",
                         exempt_when=lambda: request.endpoint != "auth.password")(auth.bp)
    # SCIM: counted per bearer token (its SHA-256, as stored), a request without one per client.
    limiter.shared_limit(lambda: app.config["RATELIMIT_SCIM"], scope="scim", key_func=_scim_key)(scim.bp)


def _scim_key() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "scim-token:" + hashlib.sha256(token.strip().encode("utf-8")).hexdigest()
    return throttling.address_key(get_remote_address())


def _wire_csrf(app: Flask) -> None:
    """The token on every POST; over HTTPS a same-origin Referer (Flask-WTF); an Origin, when sent, must be ours."""
    processors = list(app.template_context_processors[None])
    csrf = CSRFProtect(app)
    csrf.exempt(scim.bp)  # Entra authenticates with a bearer token, never a cookie: nothing to forge
    # Templates' csrf_token(): ours, which signs the token once per session secret. Flask-WTF sets its own both as a
    # global and through a context processor run at every render (which would win over the global): only the global
    # is kept, ours.
    app.template_context_processors[None] = processors
    app.jinja_env.globals["csrf_token"] = websession.csrf_token

    @app.before_request
    def same_origin_post():
        # Runs after Flask-WTF's check. Browsers send Origin with every form POST ("null" when they withhold it):
        # a cross-site one, or "null", is refused even over plain HTTP, where Flask-WTF checks no Referer.
        origin = request.headers.get("Origin")
        if (origin is not None and request.method in app.config["WTF_CSRF_METHODS"] and request.blueprint != "scim"
                and app.config["WTF_CSRF_ENABLED"] and not same_origin(origin, request.host_url)):
            # Logged: "https" against "http" here usually means a TLS proxy the portal is not told about.
            raise CSRFError(f"The origin header {origin[:100]!r} does not match {request.host_url[:-1]!r} "
                            "(behind a TLS proxy: PROXY_FIX_X_PROTO).")


def _wire_template_urls(app: Flask) -> None:
    """Templates' url_for: a path built from string values only (every page's links and stylesheet) is the same on
    every request with the same script root, so each is built once per worker, not on every page."""
    built: dict[tuple, str] = {}

    def template_url_for(endpoint: str, **values: Any) -> str:
        if (not has_request_context() or endpoint[:1] == "." or len(values) > 2
                or not all(key[:1] != "_" and isinstance(value, str) for key, value in values.items())):
            return url_for(endpoint, **values)  # relative endpoints, _external, _anchor..., ids: built each time
        key = (request.script_root, endpoint, *values.items())
        path = built.get(key)
        if path is None:
            if len(built) >= 1024:  # a bound, should a template ever pass arbitrary strings
                built.clear()
            path = built[key] = url_for(endpoint, **values)
        return path

    app.jinja_env.globals["url_for"] = template_url_for


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
    hsts = not app.config["DEMO_MODE"] and app.config["PREFERRED_URL_SCHEME"] == "https"
    # same-origin: our own form posts carry the Referer that Flask-WTF's HTTPS check needs (no-referrer made every
    # HTTPS POST fail); Microsoft and every other site still get no Referer at all.
    defaults = [("Content-Security-Policy", csp), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]
    if hsts:
        defaults.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))
    defaults_by_key = [(name.lower(), name, value) for name, value in defaults]
    # Front-channel logout is loaded in an iframe by Microsoft's sign-out page (in demo mode the emulator's, on
    # this origin): only there may the authority frame the portal; X-Frame-Options cannot name it, so none.
    framer = "'self'" if app.config["DEMO_MODE"] else f"{authority.scheme}://{authority.netloc}"
    framed_by_key = [(key, name, value.replace("frame-ancestors 'none'", f"frame-ancestors {framer}"))
                     for key, name, value in defaults_by_key if key != "x-frame-options"]

    @app.after_request
    def security_headers(response):
        headers = response.headers
        # A view may set its own value; one pass over the headers instead of a search per default.
        present = {name.lower() for name, _ in headers}
        chosen = framed_by_key if request.endpoint == "auth.front_channel_logout" else defaults_by_key
        headers.extend([(name, value) for key, name, value in chosen if key not in present])
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
        message = "Too many sign-in attempts came from here. Wait a minute, then try again."
        return render_template("error.html", status=429, title="Too many attempts", message=message), 429

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError):
        log.warning("CSRF check failed: %s", e.description)
        message = "This form has expired or did not come from this site. Go back, reload the page and try again."
        return render_template("error.html", status=400, title="Form expired", message=message), 400

    @app.errorhandler(errors.PortalError)
    @app.errorhandler(entra.EntraError)
    def portal_error(e):
        retry_after = getattr(e, "retry_after", None)
        return (render_template("error.html", status=e.status, title=e.title, message=e.message, hint=e.hint,
                                code=getattr(e, "code", None)), e.status,
                {"Retry-After": str(retry_after)} if retry_after else {})

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
                "again in a minute." if request.endpoint in auth.CALLBACKS else None)
        return render_template("error.html", status=503, title="Service unavailable",
                               message="The portal's database is not answering. Try again in a minute.",
                               hint=hint), 503, {"Retry-After": "60"}

    @app.errorhandler(500)
    def server_error(e):
        if isinstance(getattr(e, "original_exception", None), DATABASE_DOWN):  # raised outside a view's handlers
            return database_down(e.original_exception)
        return render_template("error.html", status=500, title="Something went wrong",
                               message="The portal could not finish this request. Nothing was changed."), 500
