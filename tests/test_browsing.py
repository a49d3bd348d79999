"""The production lane's browser sends what the Fetch, Referrer Policy and cookie specifications say.

The lane is only as honest as these rules: each case is a row of the specification's own tables.
"""
from __future__ import annotations

import pytest

from werkzeug.datastructures import Headers

from browsing import (CookieJar, determine_referrer, form_action_allows, frame_src_allows, may_be_framed,
                      origin_header, origin_of)

PAGE = "https://portal.example.com/settings/security?page=2#audit"
SAME = "https://portal.example.com/logout"
CROSS = "https://login.microsoftonline.com/organizations/oauth2/v2.0/logout"
DOWN = "http://portal.example.com/logout"


@pytest.mark.parametrize("policy, target, expected", [
    ("no-referrer", SAME, None),
    ("same-origin", SAME, "https://portal.example.com/settings/security?page=2"),  # no fragment
    ("same-origin", CROSS, None),
    ("same-origin", DOWN, None),  # another scheme is another origin
    ("strict-origin-when-cross-origin", SAME, "https://portal.example.com/settings/security?page=2"),
    ("strict-origin-when-cross-origin", CROSS, "https://portal.example.com/"),
    ("strict-origin-when-cross-origin", DOWN, None),
    ("strict-origin", SAME, "https://portal.example.com/"),
    ("origin", DOWN, "https://portal.example.com/"),
    ("origin-when-cross-origin", CROSS, "https://portal.example.com/"),
    ("no-referrer-when-downgrade", DOWN, None),
    ("no-referrer-when-downgrade", CROSS, "https://portal.example.com/settings/security?page=2"),
    ("unsafe-url", DOWN, "https://portal.example.com/settings/security?page=2"),
])
def test_referer_per_policy(policy, target, expected):
    assert determine_referrer(PAGE, policy, target) == expected


@pytest.mark.parametrize("policy, target, tainted, expected", [
    ("no-referrer", SAME, False, "null"),  # Chromium's "Origin: null" under no-referrer
    ("same-origin", SAME, False, "https://portal.example.com"),
    ("same-origin", CROSS, False, "null"),
    ("strict-origin-when-cross-origin", CROSS, False, "https://portal.example.com"),
    ("strict-origin-when-cross-origin", DOWN, False, "null"),
    ("unsafe-url", SAME, True, "null"),  # redirected across origins on the way
])
def test_origin_of_a_post_per_policy(policy, target, tainted, expected):
    assert origin_header(origin_of(PAGE), tainted, policy, target) == expected


def _jar(*headers, url="https://portal.example.com/login"):
    jar = CookieJar()
    for header in headers:
        jar.set_from(header, url)
    return jar


def test_secure_and_host_prefix_rules():
    assert _jar("a=1; Secure", url="http://portal.example.com/").cookies == {}
    assert _jar("__Host-a=1; Secure; Path=/; Domain=example.com").cookies == {}
    assert _jar("__Host-a=1; Secure; Path=/auth").cookies == {}
    assert _jar("__Host-a=1; Path=/").cookies == {}
    jar = _jar("__Host-a=1; Secure; Path=/; HttpOnly; SameSite=Lax")
    assert jar.header_for("https://portal.example.com/x", same_site=True, method="GET") == "__Host-a=1"
    assert jar.header_for("http://portal.example.com/x", same_site=True, method="GET") is None
    assert jar.header_for("https://other.portal.example.com/", same_site=True, method="GET") is None


def test_same_site_and_path_rules():
    jar = _jar("lax=1; Path=/; SameSite=Lax", "strict=2; Path=/; SameSite=Strict", "none=3; Secure; SameSite=None",
               "scoped=4; Path=/_entra; SameSite=Lax", "gone=5; Max-Age=0")
    url = "https://portal.example.com/logout"
    assert jar.header_for(url, same_site=True, method="POST") == "lax=1; strict=2; none=3"
    assert jar.header_for(url, same_site=False, method="GET") == "lax=1; none=3"
    assert jar.header_for(url, same_site=False, method="POST") == "none=3"
    assert jar.header_for("https://portal.example.com/_entra/x", same_site=True, method="GET").startswith("scoped=4")
    assert "scoped" not in jar.header_for("https://portal.example.com/_entrax", same_site=True, method="GET")


@pytest.mark.parametrize("target, allowed", [
    ("https://portal.example.com/logout", True),
    ("https://login.microsoftonline.com/organizations/oauth2/v2.0/logout", True),
    ("https://evil.example/", False),
    ("http://login.microsoftonline.com/", False),
])
def test_form_action(target, allowed):
    csp = "default-src 'self'; form-action 'self' https://login.microsoftonline.com"
    assert form_action_allows(csp, "https://portal.example.com/", target) is allowed


@pytest.mark.parametrize("csp, target, allowed", [
    ("default-src 'self'", "https://login.microsoftonline.com/x", True),
    ("default-src 'self'", "https://portal.example.com/", False),
    ("default-src 'self'; frame-src https://portal.example.com", "https://portal.example.com/a", True),
    ("default-src 'self'; frame-src https://portal.example.com", "https://evil.example/", False),
    (None, "https://evil.example/", True),
])
def test_frame_src(csp, target, allowed):
    assert frame_src_allows(csp, "https://login.microsoftonline.com/logout", target) is allowed


@pytest.mark.parametrize("headers, ancestor, allowed", [
    ({"Content-Security-Policy": "frame-ancestors 'none'"}, "https://portal.example.com/", False),
    ({"Content-Security-Policy": "frame-ancestors 'self'"}, "https://portal.example.com/", True),
    ({"Content-Security-Policy": "frame-ancestors 'self'"}, "https://login.microsoftonline.com/", False),
    ({"Content-Security-Policy": "default-src 'self'; frame-ancestors https://login.microsoftonline.com"},
     "https://login.microsoftonline.com/logout", True),
    ({"Content-Security-Policy": "frame-ancestors https://login.microsoftonline.com", "X-Frame-Options": "DENY"},
     "https://login.microsoftonline.com/logout", True),  # frame-ancestors wins over X-Frame-Options
    ({"X-Frame-Options": "DENY"}, "https://portal.example.com/", False),
    ({"X-Frame-Options": "SAMEORIGIN"}, "https://portal.example.com/", True),
    ({"X-Frame-Options": "SAMEORIGIN"}, "https://login.microsoftonline.com/", False),
    ({}, "https://evil.example/", True),
])
def test_framing(headers, ancestor, allowed):
    assert may_be_framed(Headers(headers), "https://portal.example.com/page", [ancestor]) is allowed
