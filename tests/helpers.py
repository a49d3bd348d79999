"""Helpers that drive the portal and the emulator through their real pages."""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import vault
from models import db

PASSWORD = "correct horse battery staple"
TEST_KEY = vault.generate_key()


class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                             "fields": {}, "buttons": [], "checkboxes": {}, "radios": {}}
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

    def handle_data(self, data):
        if getattr(self, "_pending_button", None) and self._current:
            name, value, label = self._pending_button
            self._current["buttons"][-1] = (name, value, ((label or "") + data).strip())

    def handle_endtag(self, tag):
        if tag == "button":
            self._pending_button = None
        elif tag == "form":
            self._current = None


def forms(html: str | bytes) -> list[dict]:
    parser = _Forms()
    parser.feed(html.decode() if isinstance(html, bytes) else html)
    return parser.forms


def submit(client, response, button: str, *, fields: dict | None = None, checks: dict | None = None,
           radio: dict | None = None, follow_redirects: bool = False):
    """Submit the form of `response` that has a button labelled `button`, like a browser would."""
    for form in forms(response.data):
        for name, value, label in form["buttons"]:
            if label == button:
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


def readme_gunicorn(port: int, *, instance_path: str, workers: int | None = None) -> list[str]:
    """The README's gunicorn command (its one ```sh block that runs gunicorn), bound to `port` on 127.0.0.1,
    with the app built in `instance_path`; `workers` overrides the worker count."""
    import os
    import shlex
    import sys

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
                  encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if b.lstrip().startswith("gunicorn ")]
    assert len(blocks) == 1, "the README should give one gunicorn command in one sh block"
    args = shlex.split(blocks[0])
    assert args[-1] == "app:create_app()"
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    if workers is not None:
        args[args.index("--workers") + 1] = str(workers)
    args[-1] = f"app:create_app(instance_path={instance_path!r})"
    return [sys.executable, "-m", "gunicorn"] + args[1:]
