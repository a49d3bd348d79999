"""A bounded fuzz run: random and malformed requests across every route; no 500, no change to stored data."""
from __future__ import annotations

import random
import string
import time

from helpers import activate_sso, csrf, dump_database

FUZZ_REQUESTS = 3000
FUZZ_SECONDS = 60  # a wall-clock cap as well, so a slow machine ends the run early instead of late
SEED = 20240606
# POSTs that change nothing stored even with a valid CSRF token; these get one now and then, so the fuzz
# reaches their views. Every other POST (sign-out, deactivate, anything added later) only gets bad tokens.
WITH_TOKEN = {"/login", "/login/password", "/auth/sso/start", "/settings/security/sso/activate",
              "/settings/security/sso/start"}

NASTY = [
    "", " ", "\x00", "\r\nSet-Cookie: x=1", "\u202eevil", "<script>alert(1)</script>", "javascript:alert(1)",
    "//evil.example", "/\\evil", "%2F%2Fevil", "%00", "%ff%fe", "' OR 1=1 --", "{{7*7}}", "${jndi:x}", "../" * 20,
    "a" * 5000, "é" * 300, "faß.de", "xn--", "@", "a@b", "admin@northwind.example", "ADMIN@NORTHWIND.EXAMPLE.",
    "lena.fischer@northwind.example", "x@xn--fa-hia.de", "\ud800" if False else "\ufffd", "null", "[]", "{}", "0",
    "-1", "1e999", "AADSTS65004: declined", "True", "state", "%", "%%", "+", "&&&", "==", ";",
]
KEYS = ["email", "password", "next", "state", "code", "error", "error_description", "csrf_token", "admin_consent",
        "tenant", "session_state", "client_info", "id_token", "redirect_uri", "x", ""]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=x",
                 "application/json", "text/plain", "application/x-www-form-urlencoded; charset=utf-16", "*/*", ""]


def _value(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(NASTY)
    alphabet = string.printable + "éß\u202e\u200b\ufeff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))


def _path(rng: random.Random, path: str) -> str:
    roll = rng.random()
    if roll < 0.1:
        path += rng.choice(["/", "//", "/..", "/%2e%2e", "/%00", "/" + "x" * 300, "/%0d%0aX-Forged:1", ";x"])
    elif roll < 0.15:
        path = "/r" + "".join(rng.choice(string.ascii_letters + "%/._-") for _ in range(rng.randint(1, 60)))
    # The test client reads a leading "//" as a host name; such paths reach the app as "/..." anyway.
    return "/." + path if path.startswith("//") else path


def _request(rng: random.Random, rules: list[tuple[str, list[str]]], token: str) -> dict:
    rule, allowed = rng.choice(rules)
    path = _path(rng, rule)
    method = rng.choice(METHODS) if rng.random() < 0.25 else rng.choice(allowed)
    query = [(rng.choice(KEYS), _value(rng)) for _ in range(rng.randint(0, 4))]
    headers = {}
    if rng.random() < 0.3:
        headers[rng.choice(["Referer", "Origin", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
                            "Accept-Language", "User-Agent", "X-CSRFToken", "Authorization"])] = \
            "".join(c for c in _value(rng) if 32 <= ord(c) < 127)
    kwargs: dict = {"method": method, "path": path, "query_string": query, "headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        form = {rng.choice(KEYS): _value(rng) for _ in range(rng.randint(0, 5))}
        if path in WITH_TOKEN and rng.random() < 0.4:
            form["csrf_token"] = token  # past CSRF, into the views
        if rng.random() < 0.2:
            kwargs["data"] = _value(rng).encode("utf-8", "surrogatepass")
            kwargs["content_type"] = rng.choice(CONTENT_TYPES)
        else:
            kwargs["data"] = form
    return kwargs


def test_fuzz_every_route_no_500_and_nothing_stored(app, client, emulator, northwind):
    app.config.update(RATELIMIT_SIGN_IN_PER_IP="100000 per minute", RATELIMIT_SIGN_IN_PER_ACCOUNT="100000 per minute")
    activate_sso(client)  # signed in with Microsoft as an admin: authenticated routes are reached too
    rules = sorted((r.rule.replace("<path:filename>", "portal.css"), sorted(r.methods - {"HEAD", "OPTIONS"}))
                   for r in app.url_map.iter_rules())
    token = csrf(client, "/settings/security")
    anonymous = app.test_client()
    before = dump_database(app)
    audit_before = len(before["audit_events"])
    rng = random.Random(SEED)
    statuses: dict[int, int] = {}
    sent, deadline = 0, time.monotonic() + FUZZ_SECONDS
    while sent < FUZZ_REQUESTS and time.monotonic() < deadline:
        kwargs = _request(rng, rules, token)
        browser = client
        if rng.random() < 0.25:  # an anonymous browser with a made-up cookie
            browser = anonymous
            cookie = _value(rng).encode("ascii", "ignore").decode()[:4000] or "x"
            browser.set_cookie("session", cookie, domain="portal.test")
        resp = browser.open(**kwargs)  # TESTING propagates exceptions: a crash fails the test here
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500 or resp.status_code in (502, 504), (kwargs, resp.status_code, resp.data[:300])
        sent += 1
    after = dump_database(app)
    # Only failed password attempts may be recorded (that is the audit log doing its job); nothing else changes.
    new_events = after.pop("audit_events")[audit_before:]
    assert all(event[5] == "failure" for event in new_events), new_events[:3]
    before.pop("audit_events")
    assert after == before
    assert client.get("/profile/").status_code == 200  # the signed-in session survived every request
    assert sent >= 1000, f"only {sent} requests in {FUZZ_SECONDS} s"
    print(f"fuzz: {sent} requests, statuses {dict(sorted(statuses.items()))}")
