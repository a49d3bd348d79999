"""Hostile data: claims and profile values as data, log forging, email and domain look-alikes."""
from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from domain import directory, profiles
from helpers import csrf, sign_in_state, signed_in, sso_sign_in
from models import StoredProfile, User, db

LENA = "lena.fischer@northwind.example"
HOSTILE = {
    "displayName": "<script>alert('name')</script>Lena",
    "jobTitle": "<img src=x onerror=alert(1)>",
    "companyName": "javascript:alert(document.cookie)",
    "department": "Sales\r\nX-Forged: header\r\n\r\n<h1>forged</h1>",
    "officeLocation": "Room\x00 12\x07\x1b[31m",
    "streetAddress": "\u202egnp.exe\u202c Harbour \u2066Road\u2069",
    "city": "S" * 100_000,
    "businessPhones": ["+1 555\n0102", "<b>2</b>"] + ["x"] * 50,
}


def test_hostile_profile_values_are_escaped_cleaned_and_capped(app, client, emulator, active):  # noqa: F811
    emulator.directory.user_by_upn(LENA).profile.update(HOSTILE)
    assert sso_sign_in(client, LENA).status_code == 303
    page = client.get("/profile/")
    html = page.data.decode()
    assert page.status_code == 200 and len(page.data) < 30_000
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert 'href="javascript:' not in html and "<h1>forged</h1>" not in html
    for char in ("\x00", "\x07", "\x1b", "\u202e", "\u202c", "\u2066", "\u2069"):
        assert char not in html
    with app.app_context():
        lena = db.session.execute(db.select(User).where(User.object_id.is_not(None), User.role == "member")
                                  ).scalar_one()
        stored = profiles.profile_of(lena).claims
    assert len(stored["city"]) == 256 and stored["department"] == "SalesX-Forged: header<h1>forged</h1>"
    assert stored["streetAddress"] == "gnp.exe Harbour Road" and len(stored["businessPhones"]) == 5
    assert all("\n" not in p for p in stored["businessPhones"])


def test_hostile_values_in_the_id_token_do_not_forge_log_lines(app, client, emulator, active, caplog):  # noqa: F811
    emulator.faults["id_token_claims"] = {"name": "Lena\nERROR forged entry", "preferred_username":
                                          "lena.fischer@northwind.example\r\nINFO admin signed in"}
    emulator.faults["id_token_alg"] = "foreign-key"  # refused, so the claims reach the failure paths
    with caplog.at_level(logging.DEBUG):
        assert sso_sign_in(client, LENA).status_code == 401
        client.get("/auth/callback", query_string={"state": "x\nINFO forged", "error": "access_denied\nINFO forged",
                                                   "error_description": "AADSTS65004\nINFO forged"})
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage(), record.getMessage()


def test_error_code_from_the_query_string_is_reduced_to_a_code(app, client, active):  # noqa: F811
    from helpers import start_sso
    go = start_sso(client, LENA)
    state = parse_qs(urlsplit(go.headers["Location"]).query)["state"][0]
    resp = client.get("/auth/callback", query_string={"state": state, "error": "bad\r\n<script>x</script>"})
    assert resp.status_code == 403 and b"badscriptxscript" in resp.data and b"<script>x" not in resp.data


def test_non_admin_path_with_a_newline_does_not_forge_a_log_line(app, client, active, caplog):  # noqa: F811
    sso_sign_in(client, LENA)  # a member: Settings refuse and log it
    with caplog.at_level(logging.WARNING):
        assert client.get("/settings/%0AINFO%20forged").status_code in (403, 404)
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_300_kb_id_token_is_refused_cleanly(app, client, emulator, active):  # noqa: F811
    emulator.faults["id_token_claims"] = {"filler": "x" * 300_000}
    before = sign_in_state(app)
    resp = sso_sign_in(client, LENA)
    assert resp.status_code == 401 and b"could not be verified" in resp.data
    assert sign_in_state(app) == before and not signed_in(client)
    assert len(resp.headers.get("Set-Cookie", "")) < 4096


def test_huge_claims_keep_the_cookie_small(app, client, emulator, active):  # noqa: F811
    emulator.directory.user_by_upn(LENA).profile.update({"city": "S" * 100_000, "displayName": "N" * 5_000})
    resp = sso_sign_in(client, LENA)
    assert resp.status_code == 303 and len(resp.headers["Set-Cookie"]) < 4096
    with app.app_context():
        assert db.session.scalar(db.select(db.func.max(db.func.length(StoredProfile.data_enc)))) < 8000


# -- email and domain input ---------------------------------------------------------------------

def _login(client, email):
    return client.post("/login", data={"email": email, "csrf_token": csrf(client)})


@pytest.mark.parametrize("email", [LENA, "Lena.Fischer@NorthWind.Example", "lena.fischer@northwind.example.",
                                   "  LENA.FISCHER@NORTHWIND.EXAMPLE.  "])
def test_case_and_trailing_dot_variants_reach_the_same_organisation(client, active, email):  # noqa: F811
    resp = _login(client, email)
    assert b"Before you continue to Microsoft" in resp.data or resp.status_code == 303


@pytest.mark.parametrize("email", [
    "lena@northwind.example.evil.example", "lena@northwlnd.example", "lena@n\u043erthwind.example",  # Cyrillic o
    "lena@northwind-example.com", "lena@evilnorthwind.example", "lena@xn--northwind.example",
    "lena@northwind.exampl", "lena@northwind..example",
])
def test_look_alike_domains_do_not_match(client, active, email):  # noqa: F811
    resp = _login(client, email)
    assert resp.status_code in (200, 400) and b"Continue to Microsoft" not in resp.data
    assert "Location" not in resp.headers


def test_idna_keeps_eszett_apart_from_ss(runner, app):
    assert runner.invoke(args=["create-org", "Strasse A", "--domain", "faß.de"]).exit_code == 0
    assert runner.invoke(args=["create-org", "Strasse B", "--domain", "fass.de"]).exit_code == 0  # not the same
    same = runner.invoke(args=["create-org", "Strasse C", "--domain", "XN--FA-HIA.DE."])
    assert same.exit_code == 1 and "belongs to another organisation" in same.output
    with app.app_context():
        assert directory.find_realm("a@FASS.de").organization.name == "Strasse B"
        assert directory.find_realm("a@faß.de").organization.name == "Strasse A"


@pytest.mark.parametrize("email", [
    "a&redirect_uri=https://evil.example/cb@northwind.example", "a?client_id=x@northwind.example",
    "a#frag@northwind.example", "a%2F@northwind.example", "a@northwind.example/../../evil",
    "a@northwind.example?redirect_uri=https://evil.example", "a@evil.example#@northwind.example",
    "a@northwind.example%00.evil", "a@northwind.example\r\nLocation: https://evil.example",
    "a+tag=1&domain_hint=evil.example@northwind.example",
])
def test_hostile_emails_cannot_change_where_microsoft_is_asked(client, active, email):  # noqa: F811
    resp = _login(client, email)
    if b"Continue to Microsoft" in resp.data:
        from helpers import submit
        resp = submit(client, resp, "Continue to Microsoft")
    if resp.status_code != 303:
        assert resp.status_code in (200, 400) and "Location" not in resp.headers
        return
    url = urlsplit(resp.headers["Location"])
    query = parse_qs(url.query)
    assert (url.netloc, url.path) == ("portal.test", "/_entra/organizations/oauth2/v2.0/authorize")
    assert query["redirect_uri"] == ["http://portal.test/auth/callback"]
    assert len(query["client_id"]) == 1 and query["domain_hint"] == ["northwind.example"]
