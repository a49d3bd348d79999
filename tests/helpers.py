"""Helpers that drive the portal and the emulator through their real pages."""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import vault
from models import AuditEvent, LoginSession, Organization, StoredProfile, User, db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "correct horse battery staple"
TEST_KEY = vault.generate_key()
PORTAL_HOST = "portal.example.com"
# The portal's settings as deployed (DEMO_MODE off): the one production configuration the tests start from.
PRODUCTION = {"SECRET_KEY": "p" * 48, "SERVER_NAME": PORTAL_HOST, "ENCRYPTION_KEYS": [TEST_KEY],
              "ENTRA_CLIENT_ID": "3c9a7f2e-5b1d-4e8a-9f60-2d4b8c1e7a35",
              "ENTRA_CLIENT_SECRET": "Qx8Q~vR2.kT9yLm_3pN7wZ4bC6dF1gH5jK0sA"}


class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                             "fields": {}, "buttons": [], "checkboxes": {}, "radios": {}, "selects": {}}
            self.forms.append(self._current)
        elif self._current is None:
            return
        elif tag == "input":
            kind = (a.get("type") or "text").lower()
            name = a.get("name")
            if kind == "submit":
                self._current["buttons"].append((a.get("name"), a.get("value", ""), a.get("value", "")))
            elif kind == "checkbox" and name:
                self._current["checkboxes"][name] = (a.get("value", "on"), "checked" in a)
            elif kind == "radio" and name:
                self._current["radios"].setdefault(name, []).append((a.get("value", ""), "checked" in a))
            elif name:
                self._current["fields"][name] = a.get("value", "")
        elif tag == "button":
            self._current["buttons"].append((a.get("name"), a.get("value", ""), None))
            self._pending_button = self._current["buttons"][-1]
        elif tag in ("select", "textarea") and a.get("name"):
            self._current["fields"][a["name"]] = ""
            self._select = a["name"] if tag == "select" else None
            if tag == "select":
                self._current["selects"][a["name"]] = []
        elif tag == "option" and getattr(self, "_select", None):
            # A select sends its selected option, else its first one; `selects` lists the values offered.
            options = self._current["selects"][self._select]
            options.append(a.get("value", ""))
            if "selected" in a or len(options) == 1:
                self._current["fields"][self._select] = a.get("value", "")

    def handle_data(self, data):
        if getattr(self, "_pending_button", None) and self._current:
            name, value, label = self._pending_button
            self._current["buttons"][-1] = (name, value, ((label or "") + data).strip())

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "button":
            self._pending_button = None
        elif tag == "form":
            self._current = None


def forms(html: str | bytes) -> list[dict]:
    parser = _Forms()
    parser.feed(html.decode() if isinstance(html, bytes) else html)
    return parser.forms


def form_data(form: dict, name: str | None, value: str | None, *, fields: dict | None = None,
              checks: dict | None = None, radio: dict | None = None) -> dict:
    """What a browser sends for `form` when its button (`name`, `value`) is pressed: fields, the chosen radio
    buttons, the ticked boxes (as `checks` sets them), what the test typed (`fields`) and the button itself."""
    data = dict(form["fields"])
    for rname, options in form["radios"].items():
        chosen = [v for v, checked in options if checked]
        if radio and rname in radio:
            data[rname] = radio[rname]
        elif chosen:
            data[rname] = chosen[0]
    for cname, (cvalue, checked) in form["checkboxes"].items():
        if (checks or {}).get(cname, checked):
            data[cname] = cvalue
    data.update(fields or {})
    if name:
        data[name] = value
    return data


def submit(client, response, button: str, *, fields: dict | None = None, checks: dict | None = None,
           radio: dict | None = None, follow_redirects: bool = False):
    """Submit the form of `response` that has a button labelled `button`, like a browser would."""
    for form in forms(response.data):
        for name, value, label in form["buttons"]:
            if label == button:
                data = form_data(form, name, value, fields=fields, checks=checks, radio=radio)
                action = form["action"] or urlsplit(response.request.url).path
                if form["method"] == "post":
                    return client.post(action, data=data, follow_redirects=follow_redirects)
                return client.get(action, query_string=data, follow_redirects=follow_redirects)
    raise AssertionError(f"no button {button!r} on the page:\n{response.data.decode()[:2000]}")


def follow_link(client, response, label: str):
    """Open the link of `response` whose text is `label`, like a click would."""
    html = response.data.decode()
    found = re.findall(r'<a\b[^>]*\bhref="([^"]*)"[^>]*>\s*' + re.escape(label) + r"\s*</a>", html)
    assert len(found) == 1, f"one link {label!r} expected, found {len(found)}"
    return client.get(found[0].replace("&amp;", "&"))


def csrf(client, path: str = "/login") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"',
                      page.data.decode())
    assert match, "no CSRF token on " + path
    return match.group(1) or match.group(2)


def password_sign_in(client, email: str, password: str = PASSWORD):
    """The login prompt's email step, then the password step (directly when SSO would take the email)."""
    page = client.post("/login", data={"email": email, "csrf_token": csrf(client)})
    if page.status_code != 200 or b"Enter your password" not in page.data:
        page = client.get("/login/password")
    return submit(client, page, "Sign in", fields={"email": email, "password": password})


NORTHWIND_TID = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"
FABRIKAM_TID = "b2e4d6f8-1a3c-4e5a-9b7d-c9e1f3a5b7d9"


def through_microsoft(client, resp, *, user: str | None = None, accept: bool = True, on_behalf: bool = False,
                      follow_back: bool = True):
    """Act as the person at the emulated Microsoft pages until the browser is sent back to the portal.

    Returns the portal's response to that return (the callback), or the emulator's page if it stops there.
    With follow_back=False it returns Microsoft's redirect to the callback instead, not yet followed.
    """
    for _ in range(12):
        if resp.status_code in (302, 303):
            location = resp.headers["Location"]
            if "/_entra/" not in location and not follow_back:
                return resp
            resp = client.get(location)
            if "/_entra/" not in location:
                return resp
            continue
        page = resp.data
        if b'name="step" value="signin"' in page:
            resp = submit(client, resp, "Sign in", radio={"username": user} if user else None)
        elif b'name="step" value="consent"' in page or b'name="step" value="adminconsent"' in page:
            resp = submit(client, resp, "Accept" if accept else "Cancel", checks={"on_behalf": on_behalf})
        elif b'name="step" value="approval"' in page:
            resp = submit(client, resp, "Return to the application without granting consent")
        else:
            return resp
    raise AssertionError("the emulator kept the browser too long")


def start_sso(client, email: str):
    """Type an email at the login prompt; pass the consent explanation if shown. Returns the redirect to Microsoft."""
    resp = client.post("/login", data={"email": email, "csrf_token": csrf(client)})
    if resp.status_code == 200 and b"Continue to Microsoft" in resp.data:
        resp = submit(client, resp, "Continue to Microsoft")
    assert resp.status_code == 303 and "/_entra/" in resp.headers["Location"], resp.data[:500]
    return resp


def sso_sign_in(client, email: str, **kwargs):
    return through_microsoft(client, start_sso(client, email), user=kwargs.pop("user", email), **kwargs)


def activate_sso(client, *, admin: str = "admin@northwind.example", microsoft_user: str | None = None,
                 password: str = PASSWORD, **kwargs):
    """A signed-out browser: the local admin signs in, then Settings → SECURITY → Activate SSO → Microsoft."""
    password_sign_in(client, admin, password)
    security = client.get("/settings/security")
    consent = submit(client, security, "Activate SSO")
    assert b"Continue to Microsoft" in consent.data
    go = submit(client, consent, "Continue to Microsoft")
    assert go.status_code == 303
    return through_microsoft(client, go, user=microsoft_user or admin, **kwargs)


def sign_out(client):
    return submit(client, client.get("/"), "Sign out")


def provisioning_token(app, org_id: int) -> str:
    """Turn user provisioning on for the organisation (as the operator would) and return the bearer token."""
    from domain import policy, provisioning
    with app.app_context():
        return provisioning.generate_token(db.session.get(Organization, org_id), policy.OPERATOR)


def scim_call(client, token: str, method: str, path: str, body: dict | None = None, **kwargs):
    """One call to the SCIM endpoint as Entra's provisioning service makes it."""
    return client.open("/scim/v2/" + path.lstrip("/"), method=method, json=body,
                       headers={"Authorization": "Bearer " + token, "Content-Type": "application/scim+json"},
                       **kwargs)


def scim_user(client, token: str, user_name: str, external_id: str, *, active: bool = True, **extra) -> str:
    """POST /Users (Entra's create); return the new user's SCIM id."""
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name,
            "externalId": external_id, "active": active, **extra}
    resp = scim_call(client, token, "POST", "Users", body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()["id"]


def scim_group(client, token: str, name: str, member_ids: list[str] = ()) -> str:
    """POST /Groups with its members; return the group's SCIM id."""
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name,
            "members": [{"value": m} for m in member_ids]}
    resp = scim_call(client, token, "POST", "Groups", body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()["id"]


def database_bytes(app) -> bytes:
    """SQLite: the database file with its -wal/-journal (free pages included). Elsewhere: every stored value."""
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if not uri.startswith("sqlite:///"):
        with app.app_context():
            found = []
            for table in db.metadata.sorted_tables:
                for row in db.session.execute(db.select(table)):
                    found += [v if isinstance(v, bytes) else str(v).encode() for v in row]
            return b"\0".join(found)
    path = uri.removeprefix("sqlite:///")
    assert path.startswith(app.instance_path) and os.path.exists(path)
    found = b""
    for name in (path, path + "-wal", path + "-journal"):
        if os.path.exists(name):
            with open(name, "rb") as f:
                found += f.read()
    return found


def sign_in_state(app):
    """Everything a failed sign-in must leave untouched."""
    with app.app_context():
        count = lambda m: db.session.scalar(db.select(db.func.count()).select_from(m))  # noqa: E731
        orgs = [(o.tenant_id, o.sso_active) for o in db.session.execute(db.select(Organization)).scalars()]
        return count(User), count(StoredProfile), count(LoginSession), orgs


def signed_in(client) -> bool:
    return client.get("/profile/").status_code == 200


def dump_database(app) -> dict[str, list[tuple]]:
    """Every row of every table, except a session's last-seen time (touched at most once a minute by design) and
    the rate limits' counters (every throttled request counts, whatever its answer: test_throttles.py)."""
    out = {}
    with app.app_context():
        for table in db.metadata.sorted_tables:
            if table.name in ("sign_in_hits", "rate_counts"):
                continue
            columns = [c for c in table.columns if (table.name, c.name) != ("login_sessions", "last_seen_at")]
            rows = db.session.execute(db.select(*columns).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


def all_at_once(requests):
    """Run the callables in threads (one each) released together; return their results in order."""
    gate = threading.Barrier(len(requests))

    def run(fn):
        gate.wait()
        return fn()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


# -- the README's deployment blocks: the one reader every test of the README uses -------------------------

def readme_block(name: str) -> str:
    """The README's code block marked `<!-- deploy-test: NAME -->`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    found = re.search(rf"<!-- deploy-test: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no code block marked <!-- deploy-test: {name} -->"
    return found.group(1)


def readme_env(name: str) -> dict[str, str]:
    """KEY=value lines, quoted as a shell (and systemd's EnvironmentFile) reads them."""
    env = {}
    for line in readme_block(name).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = "".join(shlex.split(value))
    return env


def readme_commands(name: str, env: dict[str, str] | None = None) -> list[list[str]]:
    """The block's commands as argument lists: `\\` continuations joined, "$VAR" taken from `env`."""
    text = readme_block(name).replace("\\\n", " ")
    return [[re.sub(r"\$(\w+)", lambda m: (env or {})[m.group(1)], arg) for arg in shlex.split(line)]
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def set_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with the value after `option` replaced; the README's command must have that option."""
    assert option in args, f"the README's command has no {option}: {args}"
    i = args.index(option)
    return args[:i + 1] + [value] + args[i + 2:]


def readme_gunicorn(port: int, *, instance_path: str, workers: int | None = None, config: dict | None = None
                    ) -> list[str]:
    """The README's gunicorn command bound to `port` on 127.0.0.1, with the app built in `instance_path` (and
    `config`, if given); `workers` overrides the worker count."""
    [args] = readme_commands("gunicorn")
    assert args[0] == "gunicorn" and args[-1] == "app:create_app()"
    args = set_option(args, "--bind", f"127.0.0.1:{port}")
    if workers is not None:
        args = set_option(args, "--workers", str(workers))
    call = f"{config!r}, instance_path={instance_path!r}" if config else f"instance_path={instance_path!r}"
    return [sys.executable, "-m", "gunicorn"] + args[1:-1] + [f"app:create_app({call})"]


# -- certificates -------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(folder) -> dict[str, str]:
    """A CA and two server certificates it signs (the portal's for nginx, the emulator's); PEM file paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Portal test CA")).issuer_name(_name("Portal test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": str(folder / "ca.pem")}
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    spki = []
    for label, names in (("portal", [x509.DNSName(PORTAL_HOST)]),
                         ("emulator", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(label)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        (folder / f"{label}.pem").write_bytes(chain)
        (folder / f"{label}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        paths[label], paths[label + "_key"] = str(folder / f"{label}.pem"), str(folder / f"{label}-key.pem")
        der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        spki.append(base64.b64encode(hashlib.sha256(der).digest()).decode())
    # Chromium trusts exactly these two keys (its own flag for test servers); nothing else is relaxed.
    paths["spki"] = ",".join(spki)
    return paths


# -- servers of a test's own ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Servers started by this test, each in its own process group, with its output in a log file."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        log.close()
        self.running.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_port(self, name: str, port: int, timeout: float = 30) -> None:
        proc = dict(self.running)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{name} did not listen on {port} within {timeout} s:\n{self.log(name)}")

    def stop(self) -> None:
        for name, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.running):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def audit_outcomes(app, action: str) -> list[tuple[str, str, int | None]]:
    """(outcome, detail, actor id) of each audit event of `action`, oldest first."""
    with app.app_context():
        return [(e.outcome, e.detail, e.actor_id) for e in db.session.execute(
            db.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()]
