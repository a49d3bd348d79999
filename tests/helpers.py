"""Helpers that drive the portal and the emulator through their real pages."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import vault

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


def csrf(client, path: str = "/login") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"',
                      page.data.decode())
    assert match, "no CSRF token on " + path
    return match.group(1) or match.group(2)


def password_sign_in(client, email: str, password: str = PASSWORD):
    page = client.post("/login", data={"email": email, "csrf_token": csrf(client)})
    assert page.status_code == 200, page.data
    return submit(client, page, "Sign in", fields={"password": password})
