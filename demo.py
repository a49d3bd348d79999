"""Demo mode in one place: the demo organisations and password, the emulator's app registration (client id and
secret), the emulator wired in for Microsoft (and its provisioning service for the portal's SCIM endpoint), and the
loopback-only guards (demo host redirect, peer check)."""
from __future__ import annotations

import logging
import os
import secrets
from urllib.parse import quote

from flask import Flask
from werkzeug.utils import redirect

import configuration
import entra
import vault
from domain import directory, errors, passwords

log = logging.getLogger(__name__)

# Demo mode's app registration in the emulator; never valid at Microsoft.
DEMO_CLIENT_ID = "5f0d1c2e-0000-4000-8000-00000000d3e0"
DEMO_PASSWORD = "northwind-demo-password"
DEMO_KEY_FILE = "encryption.keys"  # in instance/, unless ENCRYPTION_KEYS or ENCRYPTION_KEY_FILE is given
DEMO_ORGS = (
    ("Northwind Traders", "northwind.example", "admin@northwind.example"),
    ("Fabrikam Research", "fabrikam.example", "admin@fabrikam.example"),
)


def configure(app: Flask) -> None:
    """Demo settings: a generated secret key (unless given), the emulator's client, plain HTTP on loopback."""
    cfg = app.config
    # Only demo mode reuses a generated secret key; DEBUG relaxes nothing.
    if not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = _instance_secret(app, "secret_key")
    if not vault.is_set(cfg.get("ENCRYPTION_KEYS")) and not cfg.get("ENCRYPTION_KEY_FILE"):
        cfg["ENCRYPTION_KEY_FILE"] = _demo_key_file(app)
    cfg["ENTRA_CLIENT_ID"] = DEMO_CLIENT_ID
    cfg["ENTRA_CLIENT_SECRET"] = _instance_secret(app, "demo_client_secret")
    if not cfg["SERVER_NAME"]:
        cfg["SERVER_NAME"] = "127.0.0.1:5000"
    cfg["PREFERRED_URL_SCHEME"] = "http"


def _demo_key_file(app: Flask) -> str:
    """The demo's encryption key file in instance/, generated once (mode 0600) and shared by every worker."""
    path = os.path.join(app.instance_path, DEMO_KEY_FILE)
    if not os.path.exists(path):
        os.makedirs(app.instance_path, exist_ok=True)
        try:
            vault.write_key_file(path, [vault.generate_key()])
            log.warning("DEMO_MODE: generated a demo encryption key file at %s", path)
        except FileExistsError:
            pass  # another worker created it first; use that one so all workers agree
    log.warning("DEMO_MODE: personal data is encrypted with the demo key file %s; this is for demos only, "
                "set ENCRYPTION_KEYS for real data", path)
    return path


def wire(app: Flask) -> None:
    """Microsoft played by the emulator, and other loopback names sent to SERVER_NAME."""
    _wire_emulator(app)
    _wire_demo_host(app)


def create_data() -> None:
    """The demo organisations, each with a break-glass admin (safe to repeat)."""
    for name, domain, email in DEMO_ORGS:
        try:
            directory.get_organization(name)
        except errors.PortalError:
            directory.create_organization(name, [domain])
            passwords.create_local_user(email, name, DEMO_PASSWORD, role="admin", break_glass=True)


def provisioning_page(app: Flask, domain: str = "northwind.example") -> str:
    """The emulated Entra admin centre's Provisioning page for the demo app in the tenant of `domain`."""
    emu = app.extensions["entra_emulator"]
    return (f"{emu.browser_url}/{emu.directory.tenant(domain).tid}/enterprise-applications/"
            f"{app.config['ENTRA_CLIENT_ID']}/provisioning")


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
    from emulator.transport import WSGIAdapter

    base = f"{app.config['PREFERRED_URL_SCHEME']}://{app.config['SERVER_NAME']}"
    emu = Emulator(
        os.path.join(app.instance_path, "emulator"),
        browser_url=base + "/_entra",
        max_content_length=app.config["MAX_CONTENT_LENGTH"],
        clients={
            app.config["ENTRA_CLIENT_ID"]: {
                "secret": app.config["ENTRA_CLIENT_SECRET"],
                "redirect_uris": [base + entra.CALLBACK_PATH, base + entra.ADMIN_CONSENT_CALLBACK_PATH],
                "name": app.config["PORTAL_NAME"] + " (demo)",
                "front_channel_logout_url": base + entra.FRONT_CHANNEL_LOGOUT_PATH,
            }
        },
    )
    emu.mount(entra.get_http(app))
    # Entra's provisioning service (the emulator's Provisioning page, Provision now) reaches the portal's own
    # /scim/v2/ in-process: a Tenant URL on the portal's origin never leaves the process.
    emu.provisioning_session.mount(base + "/", WSGIAdapter(app))
    app.extensions["entra_emulator"] = emu
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_entra": emu.wsgi})


DEMO_REMOTE_REFUSED = (
    "This demo portal answers only on this computer (a loopback address): anyone who can reach it could pick "
    "any account on the emulated Microsoft page, and the demo admin's password is in the README. Serve it on "
    "127.0.0.1, or leave demo mode and configure a real Entra app registration.\n")


def loopback_only(app: Flask) -> None:
    """Demo mode: refuse requests whose socket peer is not loopback.

    gunicorn does not tell the app where it is bound, so this runs on each request, outermost (the peer before
    ProxyFix), and covers the emulator's pages under /_entra too."""
    inner = app.wsgi_app

    def loopback_only(environ, start_response):
        if configuration.is_loopback(environ.get("REMOTE_ADDR", "")):
            return inner(environ, start_response)
        log.warning("Demo mode refused a request from a non-loopback address")
        body = DEMO_REMOTE_REFUSED.encode()
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                                         ("X-Content-Type-Options", "nosniff")])
        return [body]

    app.wsgi_app = loopback_only


def _wire_demo_host(app: Flask) -> None:
    """Demo mode: send a request for another loopback name (localhost, [::1]) to the same path on SERVER_NAME.

    The sign-in cookie and Microsoft's redirect URI belong to SERVER_NAME; on another host name the login form
    would be redirected there and the page's form-action 'self' would silently block the hop.
    """
    server_name = app.config["SERVER_NAME"]
    base = f"{app.config['PREFERRED_URL_SCHEME']}://{server_name}"
    inner = app.wsgi_app

    def split(host: str) -> tuple[str, str]:
        return (host.rpartition(":")[0], host.rpartition(":")[2]) if host.rfind(":") > host.rfind("]") else (host, "")

    server_host, server_port = split(server_name.lower())

    def redirect_loopback(environ, start_response):
        name, port = split(environ.get("HTTP_HOST", "").lower())
        # Only another name for this same server (same port): a request on another port is another server's.
        if port == server_port and name != server_host and configuration.is_loopback(name):
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")  # WSGI: latin-1 decoded bytes
            location = base + quote(path.encode("latin-1"), safe="/%:@!$&'()*+,;=-._~")
            if environ.get("QUERY_STRING"):
                location += "?" + environ["QUERY_STRING"]
            return redirect(location, 307)(environ, start_response)
        return inner(environ, start_response)

    app.wsgi_app = redirect_loopback
