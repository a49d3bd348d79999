"""The portal against Microsoft's `identity` library (issue 17), in one run with alternating rounds.

    .venv/bin/pip install -r bench/requirements.txt            # identity[flask], the peer's library
    .venv/bin/python -m bench.bench_peer [--database-url postgresql+psycopg://USER@127.0.0.1:PORT/DB]

Both apps sign in against one emulator over HTTPS on 127.0.0.1 (the README's staging set-up, the emulator's app served
by gunicorn so that connections stay open as Microsoft's do: emulator_wsgi.py), so both make real back-channel calls
and the emulator's CPU stays in its own process. The portal runs with
the staging settings (ENTRA_AUTHORITY, GRAPH_ENDPOINT, ENTRA_CA_BUNDLE); the peer (peer_identity.py) gets the same
authority, the portal's client registration and the CA through REQUESTS_CA_BUNDLE, as `identity` takes no HTTP
client of its own. Measured, alternating portal and peer in every round:

- CPU per complete sign-in: the thread's CPU time while the app handles a request (in-process, Flask test client),
  the browser's side (its HTML parsing and its HTTPS calls to the emulator's pages) left out; for the portal also
  split by part as in bench_scale.py;
- requests/s under gunicorn with the README's worker settings (the same for the peer, no access log for either)
  and `wrk -t1 -cN`: the portal's /profile/ and login prompt, the peer's signed-in index and its login page;
- peak RSS (VmHWM) of each worker after the load.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from types import SimpleNamespace
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import extensions
import vault as vault_module
from app import create_app
from domain import directory, passwords
from bench.harness import PORTAL_CATEGORIES, CpuSplit, Schema, free_port, peak_rss_mb, worker_pids, wrk
from tests.helpers import PASSWORD, csrf, password_sign_in, readme_gunicorn, submit

MEMBERS = ("lena.fischer@northwind.example", "omar.haddad@northwind.example", "jun.park@northwind.example")
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")  # MSAL's, both apps'
CLIENT_ID, CLIENT_SECRET = "bench-client-0000-4000-8000-000000000001", "bench-client-secret"
BROWSER = "browser (left out)"
NOT_COUNTED = (BROWSER, "emulator (Microsoft's side)")


# -- the emulator over HTTPS ------------------------------------------------------------------------

def make_certificates(folder: str) -> tuple[str, str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                  cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class Browser:
    """One person's browser across two origins: the app in this process (its Flask test client, whose requests the
    CPU split charges to the app) and the emulator's pages over HTTPS. Quacks like a test client for helpers.py."""

    def __init__(self, app, app_origin: str, emulator_origin: str, ca: str, address: str) -> None:
        self.client = app.test_client()
        self.client.environ_base["REMOTE_ADDR"] = address
        self.app_origin, self.emulator_origin, self.origin = app_origin, emulator_origin, app_origin
        self.page = ""
        self.http, self.ca = requests.Session(), ca

    def get(self, url: str, query_string=None, follow_redirects: bool = False):
        return self._open("GET", url, query_string=query_string)

    def post(self, url: str, data=None, follow_redirects: bool = False):
        return self._open("POST", url, data=data)

    def _open(self, method: str, url: str, query_string=None, data=None):
        parts = urlsplit(url)
        if parts.netloc:
            self.origin = f"{parts.scheme}://{parts.netloc}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        referrer, self.page = self.page, self.origin + path
        if self.origin == self.emulator_origin:
            r = self.http.request(method, self.origin + path, params=query_string, data=data, allow_redirects=False,
                                  verify=self.ca, timeout=30)
            return SimpleNamespace(status_code=r.status_code, headers=r.headers, data=r.content,
                                   request=SimpleNamespace(url=r.url))
        assert self.origin == self.app_origin, url
        # Browsers send the page a form was on; Flask-WTF checks it on HTTPS.
        return self.client.open(path, method=method, base_url=self.origin, query_string=query_string, data=data,
                                headers={"Referer": referrer} if referrer else None)

    def through_emulator(self, resp, user: str):
        """Act as `user` at the emulator's pages until it sends the browser back; return the app's answer."""
        for _ in range(12):
            if resp.status_code in (302, 303):
                resp = self.get(resp.headers["Location"])
                if self.origin != self.emulator_origin:
                    return resp
            elif b'name="step" value="signin"' in resp.data:
                resp = submit(self, resp, "Sign in", radio={"username": user})
            elif b'name="step" value="consent"' in resp.data or b'name="step" value="adminconsent"' in resp.data:
                resp = submit(self, resp, "Accept")
            else:
                raise AssertionError(resp.data[:500])
        raise AssertionError("the emulator kept the browser too long")


# -- the two apps -----------------------------------------------------------------------------------

class Side:
    """One app: built in this process for the sign-ins, served by gunicorn for wrk."""

    label = ""

    def __init__(self, port: int, emulator_url: str, ca: str) -> None:
        self.folder = tempfile.mkdtemp(prefix="portal-peer-bench-")
        self.port = port
        self.emulator_url, self.ca = emulator_url, ca
        self.timed, self.addresses, self.cpu = 0, 0, defaultdict(float)
        self.rates: dict[str, list[float]] = defaultdict(list)
        self.master: subprocess.Popen | None = None

    def browser(self) -> Browser:
        # Each sign-in from its own loopback address, as people sign in: the per-IP limits count and refuse none.
        self.addresses += 1
        return Browser(self.app, self.origin, self.emulator_url, self.ca,
                       str(ipaddress.IPv4Address("127.1.0.0") + self.addresses))

    def sign_in_batch(self, split: CpuSplit, count: int) -> None:
        split.reset()
        for i in range(count):
            self.sign_in(self.browser(), MEMBERS[i % len(MEMBERS)])
        split._tick()  # charge the last stretch before reading the totals
        for category, seconds in split.totals.items():
            self.cpu[category] += seconds
        self.timed += count

    def cookie_of(self, browser: Browser, name: str) -> str:
        return f"{name}={browser.client.get_cookie(name, domain='127.0.0.1').value}"

    def serve(self, command: list[str], env: dict) -> None:
        # The README's worker settings; the access log (a line per request on stdout) is left out for both apps.
        i = command.index("--access-logfile")
        del command[i:i + 4]
        self.master = subprocess.Popen(command + ["--log-level", "warning"], env=env, cwd=ROOT)

    def wait_until_serving(self, path: str) -> None:
        for _ in range(600):
            try:
                requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)
                return
            except requests.RequestException:  # workers still starting
                time.sleep(0.1)
        raise SystemExit(f"{self.label} did not start")

    def check_signed_in(self) -> bool:
        path, cookie, name = self.signed_in_page
        page = requests.get(f"http://127.0.0.1:{self.port}{path}", headers={"Cookie": cookie}, allow_redirects=False,
                            timeout=10)
        return page.status_code == 200 and name.encode() in page.content

    def renew_cookie(self) -> None:
        raise SystemExit(f"{self.label}: the benchmark cookie is no longer signed in")

    def rss(self) -> list[float]:
        return [peak_rss_mb(pid) for pid in worker_pids(self.master.pid)]

    def close(self) -> None:
        if self.master is not None:
            self.master.terminate()
            self.master.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


class Portal(Side):
    label = "the portal"

    def __init__(self, port: int, emulator_url: str, ca: str, database_url: str | None) -> None:
        super().__init__(port, emulator_url, ca)
        self.origin = f"https://127.0.0.1:{self.port}"
        self.schema = Schema(database_url) if database_url else None
        self.config = {"SERVER_NAME": f"127.0.0.1:{self.port}", "SECRET_KEY": "b" * 48,
                       "ENCRYPTION_KEYS": [vault_module.generate_key()], "ENTRA_CLIENT_ID": CLIENT_ID,
                       "ENTRA_CLIENT_SECRET": CLIENT_SECRET, "ENTRA_AUTHORITY": emulator_url + "/organizations",
                       "GRAPH_ENDPOINT": emulator_url + "/graph/v1.0", "ENTRA_CA_BUNDLE": ca,
                       "ENTRA_TRUST_ENV": False}  # no proxy here: the README's setting for that
        if self.schema:
            self.config["SQLALCHEMY_DATABASE_URI"] = self.schema.uri
        self.app = create_app(self.config, instance_path=self.folder)
        with self.app.app_context():
            extensions.upgrade_schema()  # outside demo mode the operator runs `flask db upgrade`
            directory.create_organization("Northwind Traders", ["northwind.example"])
            passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        admin = self.browser()
        password_sign_in(admin, "admin@northwind.example")
        consent = submit(admin, admin.get("/settings/security"), "Activate SSO")
        resp = admin.through_emulator(submit(admin, consent, "Continue to Microsoft"), "admin@northwind.example")
        assert resp.status_code == 303, resp.data[:300]
        for n, email in enumerate(MEMBERS):  # first sign-ins (user creation, consent) are not what we time
            browser = self.browser()
            self.sign_in(browser, email)
            if n == 0:
                # The first page after sign-in shows (and drops from the cookie) the "Signed in" message: wrk
                # replays the cookie a browser holds for every page after that one.
                assert browser.get("/profile/").status_code == 200
                self.signed_in_page = ("/profile/", self.cookie_of(browser, self.app.config["SESSION_COOKIE_NAME"]),
                                       "Lena Fischer")

    def sign_in(self, browser: Browser, email: str) -> None:
        resp = browser.post("/login", data={"email": email, "csrf_token": csrf(browser)})
        if resp.status_code == 200 and b"Continue to Microsoft" in resp.data:
            resp = submit(browser, resp, "Continue to Microsoft")
        resp = browser.through_emulator(resp, email)
        assert resp.status_code == 303 and resp.headers["Location"].endswith("/"), resp.data[:300]

    def start(self, workers: int | None) -> None:
        env = dict(os.environ)
        env.update({f"FLASK_{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in self.config.items()})
        self.serve(readme_gunicorn(self.port, instance_path=self.folder, workers=workers), env)

    def targets(self) -> dict[str, tuple[str, str | None]]:
        base = f"http://127.0.0.1:{self.port}"
        return {"signed_in": (base + "/profile/", self.signed_in_page[1]), "login": (base + "/login", None)}

    def close(self) -> None:
        super().close()
        if self.schema is not None:
            self.schema.drop()


class Peer(Side):
    label = "identity app"

    def __init__(self, port: int, emulator_url: str, ca: str) -> None:
        super().__init__(port, emulator_url, ca)
        self.origin = f"http://127.0.0.1:{self.port}"
        self.env = {"PEER_SESSION_DIR": os.path.join(self.folder, "sessions"), "PEER_CLIENT_ID": CLIENT_ID,
                    "PEER_AUTHORITY": emulator_url + "/organizations", "PEER_CLIENT_SECRET": CLIENT_SECRET,
                    "PEER_REDIRECT_URI": self.origin + "/auth/response", "REQUESTS_CA_BUNDLE": ca}
        os.environ.update(self.env)
        from bench import peer_identity
        self.app = peer_identity.create_app()
        for email in MEMBERS:
            self.sign_in(self.browser(), email)
        self.renew_cookie()

    def sign_in(self, browser: Browser, email: str):
        page = browser.get("/")  # the login page: a meta refresh to Microsoft's authorize URL
        go = re.search(rb"URL=([^']+)'", page.data)
        assert page.status_code == 200 and go, page.data[:300]
        resp = browser.through_emulator(browser.get(go.group(1).decode().replace("&amp;", "&")), email)
        assert resp.status_code == 302 and resp.headers["Location"] == self.origin + "/", resp.data[:300]
        return browser

    def renew_cookie(self) -> None:
        browser = self.sign_in(self.browser(), MEMBERS[0])
        assert b"Lena Fischer" in browser.get("/").data
        self.signed_in_page = ("/", self.cookie_of(browser, self.app.config["SESSION_COOKIE_NAME"]), "Lena Fischer")

    def start(self, workers: int | None) -> None:
        command = readme_gunicorn(self.port, instance_path=self.folder, workers=workers)
        command[-1:] = ["bench.peer_identity:create_app()"]
        self.serve(command, dict(os.environ, **self.env))

    def targets(self) -> dict[str, tuple[str, str | None]]:
        base = f"http://127.0.0.1:{self.port}"
        return {"signed_in": (base + "/", self.signed_in_page[1]), "login": (base + "/", None)}


# -- run --------------------------------------------------------------------------------------------

def measure(portal: Portal, peer: Peer, args) -> None:
    split = CpuSplit(outside=BROWSER)
    split.install()
    for side in (portal, peer):
        split.charge_app(side.app)
    batch = max(1, args.sign_ins // args.rounds)
    rounds = [(portal, peer) if r % 2 == 0 else (peer, portal) for r in range(args.rounds)]  # who goes first
    for sides in rounds:
        for side in sides:
            side.sign_in_batch(split, batch)
    for side in (portal, peer):
        side.start(args.workers)
    portal.wait_until_serving("/healthz")
    peer.wait_until_serving("/")
    for sides in rounds:
        for name in ("signed_in", "login"):
            for side in sides:
                if name == "signed_in" and not side.check_signed_in():
                    # Flask-Session prunes its files beyond 500 sessions (the login page's flood makes thousands).
                    side.renew_cookie()
                    assert side.check_signed_in(), f"{side.label}: the benchmark cookie is not signed in"
                url, cookie = side.targets()[name]
                side.rates[name].append(wrk(url, args.seconds, args.connections, cookie))
                if name == "signed_in":
                    assert side.check_signed_in(), f"{side.label}: the cookie stopped working during the round"


def report(portal: Portal, peer: Peer, args) -> None:
    def per_sign_in(side: Side, categories=None) -> float:
        return sum(v for k, v in side.cpu.items() if (k in categories if categories else k not in NOT_COUNTED)
                   ) / side.timed * 1000

    def rate(side: Side, name: str) -> float:
        return statistics.median(side.rates[name])

    p_cpu, i_cpu = per_sign_in(portal), per_sign_in(peer)
    p_rss, i_rss = max(portal.rss()), max(peer.rss())
    rows = [
        ("CPU per complete sign-in, ms (≤ 1.5x)", f"{p_cpu:.2f}", f"{i_cpu:.2f}", f"{p_cpu / i_cpu:.2f}x"),
        ("signed-in page, requests/s (≥ 1.5x)", f"{rate(portal, 'signed_in'):.0f}", f"{rate(peer, 'signed_in'):.0f}",
         f"{rate(portal, 'signed_in') / rate(peer, 'signed_in'):.2f}x"),
        ("login prompt ÷ peer's signed-in page (≥ 2x)", f"{rate(portal, 'login'):.0f}",
         f"{rate(peer, 'signed_in'):.0f}", f"{rate(portal, 'login') / rate(peer, 'signed_in'):.2f}x"),
        ("  login prompt ÷ peer's login page", f"{rate(portal, 'login'):.0f}", f"{rate(peer, 'login'):.0f}",
         f"{rate(portal, 'login') / rate(peer, 'login'):.2f}x"),
        ("peak RSS per worker, MB (≤ +25 MB)", f"{p_rss:.1f}", f"{i_rss:.1f}", f"{p_rss - i_rss:+.1f} MB"),
    ]
    print(f"\n{args.rounds} rounds, {portal.timed} and {peer.timed} timed sign-ins, gunicorn as in the README "
          f"({args.workers or 'its'} workers), wrk -t1 -c{args.connections} -d{args.seconds}s; "
          f"{args.database_url or 'SQLite'}")
    head = f"{'figure':<46}{'the portal':>12}{'identity app':>14}{'ratio':>12}"
    print(head)
    print("-" * len(head))
    for label, *values in rows:
        print(f"{label:<46}" + "".join(f"{v:>{w}}" for v, w in zip(values, (12, 14, 12))))
    for name, label in (("signed_in", "signed-in page"), ("login", "login page")):
        print(f"  {label} per round, requests/s: the portal " + " ".join(f"{r:.0f}" for r in portal.rates[name])
              + ", identity app " + " ".join(f"{r:.0f}" for r in peer.rates[name]))
    print("\nthe portal's CPU per sign-in by part, ms (the identity app's MSAL share: "
          f"{per_sign_in(peer, ('MSAL',)):.2f})")
    for category in PORTAL_CATEGORIES:
        print(f"  {category:<44}{per_sign_in(portal, (category,)):>12.2f}")


def start_emulator(folder: str, redirect_uris: list[str]) -> tuple[subprocess.Popen, str, str]:
    """The emulator's app as `python -m emulator` builds it, served by gunicorn over HTTPS, which keeps connections
    alive as Microsoft does (werkzeug's server closes each one); the peer signs in as the portal's app registration.
    Returns the process, its URL and the CA bundle to trust, once it answers."""
    ca, cert, key = make_certificates(folder)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread", "--threads", "8",
         "--keep-alive", "75", "--certfile", cert, "--keyfile", key, "--bind", f"127.0.0.1:{port}",
         "bench.emulator_wsgi:create_app()"],
        cwd=ROOT, stderr=open(os.path.join(folder, "emulator.log"), "wb"),
        env=dict(os.environ, BENCH_EMULATOR_URL=url, BENCH_EMULATOR_INSTANCE=folder,
                 BENCH_EMULATOR_CLIENT_ID=CLIENT_ID, BENCH_EMULATOR_CLIENT_SECRET=CLIENT_SECRET,
                 BENCH_EMULATOR_REDIRECT_URIS=json.dumps(redirect_uris)))
    for _ in range(300):
        try:
            requests.get(url + "/organizations/v2.0/.well-known/openid-configuration", verify=ca,
                         timeout=5).raise_for_status()
            return emulator, url, ca
        except requests.ConnectionError:  # not listening yet
            time.sleep(0.1)
    emulator.terminate()
    raise SystemExit(f"the emulator did not start: see {folder}/emulator.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="the portal's PostgreSQL; default: SQLite in a temporary folder")
    parser.add_argument("--workers", type=int, help="gunicorn workers for both (default: the README's)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per page and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians (default 3)")
    parser.add_argument("--sign-ins", type=int, default=90, help="timed sign-ins per app (default 90)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    folder = tempfile.mkdtemp(prefix="portal-peer-emulator-")
    portal_port, peer_port = free_port(), free_port()
    sides: list[Side] = []
    emulator, emulator_url, ca = start_emulator(folder, [f"https://127.0.0.1:{portal_port}/auth/callback",
                                                         f"https://127.0.0.1:{portal_port}/auth/admin-consent/callback",
                                                         f"http://127.0.0.1:{peer_port}/auth/response"])
    try:
        print("setting up the portal and the identity app", flush=True)
        sides.append(Portal(portal_port, emulator_url, ca, args.database_url))
        sides.append(Peer(peer_port, emulator_url, ca))
        measure(*sides, args)
        report(*sides, args)
    finally:
        for side in sides:
            side.close()
        emulator.terminate()
        emulator.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
