"""CPU per request of the two page targets of issue 17, in-process: python -m bench.bench_pages

Not a test. Builds the portal with the production settings (tests/helpers.PRODUCTION, SQLite in a temporary folder,
Microsoft's hosts answered by the emulator on the portal's outbound session), activates SSO, signs a member in, then
times requests through the WSGI app with `time.thread_time()` (robust on a shared machine, where wrk is not):

- `/profile/` with the member's cookie (the server-side session check, the profile copy read and decrypted);
- GET `/login` without a cookie (a new visitor: a new session with a CSRF secret, its cookie set).

With `--peer`, also the signed-in page of the `identity` sample app (bench/peer_identity.py, needs
bench/requirements.txt) with a session holding a signed-in user's ID token claims, as its callback leaves it (no
sign-in: its page reads nothing else). Each round runs `--requests` of each page, rotating which goes first; it
prints the minimum over rounds in µs per request. `--profile PAGE` prints a cProfile of that page instead.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tests' browser and helpers import each other by name

from werkzeug.test import EnvironBuilder

import entra
from app import create_app
from emulator import Emulator
from models import db
from tests.browsing import PortalBrowser
from tests.helpers import PASSWORD, PORTAL_HOST, PRODUCTION

ADMIN, MEMBER = "admin@northwind.example", "lena.fischer@northwind.example"
PORTAL, MICROSOFT = "https://" + PORTAL_HOST, "https://login.microsoftonline.com"


def build(folder: str):
    """The production lane's portal and emulator, SSO active, MEMBER signed in; returns (app, MEMBER's cookie)."""
    instance = os.path.join(folder, "instance")
    setup = create_app(PRODUCTION, instance_path=instance)
    for args, stdin in ((["init-db"], None),
                        (["create-org", "Northwind Traders", "--domain", "northwind.example"], None),
                        (["create-admin", ADMIN, "--org", "Northwind Traders", "--password-stdin"], PASSWORD + "\n")):
        result = setup.test_cli_runner().invoke(args=args, input=stdin)
        assert result.exit_code == 0, result.output
    with setup.app_context():
        db.engine.dispose()
    app = create_app(PRODUCTION, instance_path=instance)
    emu = Emulator(os.path.join(folder, "entra"), browser_url=MICROSOFT, clients={
        PRODUCTION["ENTRA_CLIENT_ID"]: {
            "secret": PRODUCTION["ENTRA_CLIENT_SECRET"], "name": "Customer Portal",
            "redirect_uris": [PORTAL + entra.CALLBACK_PATH, PORTAL + entra.ADMIN_CONSENT_CALLBACK_PATH],
            "front_channel_logout_url": PORTAL + entra.FRONT_CHANNEL_LOGOUT_PATH}})
    emu.mount(entra.get_http(app))
    sites = {PORTAL_HOST: app, "login.microsoftonline.com": emu.wsgi}
    admin = PortalBrowser(sites, PORTAL)
    admin.sign_in_locally(ADMIN, PASSWORD)
    admin.open("/settings/security")
    admin.submit("Activate SSO")
    admin.submit("Continue to Microsoft")
    assert admin.at_microsoft(ADMIN).url == PORTAL + "/settings/security"
    member = PortalBrowser(sites, PORTAL)
    member.sso_sign_in(MEMBER)
    page = member.open("/profile/")  # the first page shows (and drops) the "Signed in" message
    assert page.status == 200 and "Lena Fischer" in page, page.text[:500]
    cookie = member.cookie(app.config["SESSION_COOKIE_NAME"])
    return app, f"{cookie.name}={cookie.value}"


def build_peer(folder: str):
    """The `identity` sample app with a signed-in browser's cookie; returns (app, cookie)."""
    os.environ.update({"PEER_SESSION_DIR": os.path.join(folder, "peer-sessions"), "PEER_CLIENT_ID": "bench-client",
                       "PEER_CLIENT_SECRET": "bench-secret", "PEER_AUTHORITY": MICROSOFT + "/organizations",
                       "PEER_REDIRECT_URI": "http://127.0.0.1/auth/response"})
    from bench import peer_identity
    from identity.web import Auth
    app = peer_identity.create_app()
    client = app.test_client()
    with client.session_transaction() as session:
        session[Auth._USER] = {"name": "Lena Fischer", "preferred_username": MEMBER, "oid": "1b7e2d63",
                               "tid": "6f1c2d3e", "sub": "s", "iat": time.time(), "exp": time.time() + 86400}
    name = app.config["SESSION_COOKIE_NAME"]
    return app, f"{name}={client.get_cookie(name).value}"


def environ_for(path: str, cookie: str | None, base_url: str = PORTAL) -> dict:
    headers = {"Cookie": cookie} if cookie else {}
    return EnvironBuilder(path=path, base_url=base_url, headers=headers,
                          environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


def request_once(app, environ: dict, expect: bytes) -> None:
    status = []
    body = b"".join(app(dict(environ), lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200") and expect in body, (status, body[:300])


def cpu_per_request(app, environ: dict, expect: bytes, n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        request_once(app, environ, expect)
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--peer", action="store_true", help="also the identity sample app's signed-in page")
    parser.add_argument("--profile", choices=("profile", "login", "peer"), help="print a cProfile of this page instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portal-pages-bench-") as folder:
        app, cookie = build(folder)
        pages = {"profile": (app, environ_for("/profile/", cookie), b"Lena Fischer"),
                 "login": (app, environ_for("/login", None), b'name="csrf_token"')}
        if args.peer or args.profile == "peer":
            peer, peer_cookie = build_peer(folder)
            pages["peer"] = (peer, environ_for("/", peer_cookie, "http://127.0.0.1"), b"Lena Fischer")
        for page in pages.values():
            for _ in range(50):  # warm up: caches, compiled templates, the pool
                request_once(*page)
        if args.profile:
            page = pages[args.profile]
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.requests):
                request_once(*page)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(60)
            print(out.getvalue())
            return
        best = {name: float("inf") for name in pages}
        names = list(pages)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                best[name] = min(best[name], cpu_per_request(*pages[name], args.requests))
        labels = {"profile": "/profile/", "login": "GET /login", "peer": "identity app's signed-in page"}
        for name in pages:
            print(f"{labels[name]:<30} {best[name]:7.0f} µs CPU per request "
                  f"(min of {args.rounds} rounds × {args.requests})")
        if "peer" in pages:
            print(f"the peer's page ÷ /profile/: {best['peer'] / best['profile']:.2f}; "
                  f"÷ the login prompt: {best['peer'] / best['login']:.2f}  "
                  "(the targets: ≥ 1.5 and ≥ 2 in requests/s)")
        with app.app_context():
            db.engine.dispose()


if __name__ == "__main__":
    main()
