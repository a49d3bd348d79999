"""Issue 18's demo and pages: the demo's host name, inline input errors, re-opened callbacks, the words on pages,
the AUDIT LOG tab and the portal's own name, logo and links."""
from __future__ import annotations

import html as html_lib
import logging
import re

import pytest

import extensions
from domain import auditlog, directory, passwords, policy
from app import ConfigError, create_app
from helpers import (PASSWORD, PRODUCTION, activate_sso, csrf, follow_link, password_sign_in, sign_out, sso_sign_in,
                     submit)

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"
NOT_AN_EMAIL = "Enter an email address like name@example.com."


def _text(resp) -> str:
    """The page's HTML as a reader's words: entities decoded, runs of white space as one space."""
    return re.sub(r"\s+", " ", html_lib.unescape(resp.data.decode()))


# -- the demo's host name -----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "[::1]", "127.0.0.2", "app.localhost", "localhost."])
def test_demo_sends_other_loopback_names_to_server_name(client, host):
    resp = client.get("/login", query_string={"next": "/profile/"}, base_url=f"http://{host}")
    assert resp.status_code == 307 and resp.headers["Location"] == "http://portal.test/login?next=/profile/"
    form = client.post("/login", data={"email": ADMIN}, base_url=f"http://{host}")  # the form goes on, as a POST
    assert form.status_code == 307 and form.headers["Location"] == "http://portal.test/login"
    emulator_page = client.get("/_entra/organizations/oauth2/v2.0/authorize", base_url=f"http://{host}")
    assert emulator_page.headers["Location"] == "http://portal.test/_entra/organizations/oauth2/v2.0/authorize"


@pytest.mark.parametrize("host", ["portal.test", "evil.example", "localhost:5001", "[::1]:5001"])
def test_demo_leaves_its_own_name_other_names_and_other_ports_alone(client, host):
    # portal.test is the SERVER_NAME; a loopback name on another port is another server's address
    resp = client.get("/login", base_url=f"http://{host}")
    assert resp.status_code == 200 and "Location" not in resp.headers


def test_demo_on_a_port_redirects_loopback_names_on_that_port(tmp_path, database_uri):
    config = {"TESTING": True, "DEMO_MODE": True, "SECRET_KEY": "t" * 48}  # SERVER_NAME: the demo's 127.0.0.1:5000
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    client = create_app(config, instance_path=str(tmp_path / "instance")).test_client()
    resp = client.get("/", base_url="http://localhost:5000")
    assert resp.status_code == 307 and resp.headers["Location"] == "http://127.0.0.1:5000/"
    assert client.get("/login", base_url="http://127.0.0.1:5000").status_code == 200


def test_outside_demo_mode_trusted_hosts_refuses_localhost_plainly(tmp_path):
    app = create_app({**PRODUCTION, "TRUSTED_HOSTS": ["portal.example.com"]}, instance_path=str(tmp_path))
    refused = app.test_client().get("/login", base_url="http://localhost:5000")
    assert refused.status_code == 400 and b"not served here" in refused.data and "Location" not in refused.headers


# -- inline input errors ------------------------------------------------------------------------

def _field(html: str, name: str) -> str:
    return re.search(r'<input id="%s"[^>]*>' % name, html, re.S).group(0)


@pytest.mark.parametrize("typed, message", [
    ("not an email", NOT_AN_EMAIL), ("@@@", NOT_AN_EMAIL), ("admin@", NOT_AN_EMAIL), ("a@b@c", NOT_AN_EMAIL),
    ("x" * 5000 + "@northwind.example",
     "This is too long for an email address: enter one of at most 254 characters."),
    ("", "Enter your email address."), ("   ", "Enter your email address."),
])
def test_login_prompt_shows_input_errors_on_the_same_form(client, northwind, typed, message):
    resp = client.post("/login", data={"email": typed, "csrf_token": csrf(client), "next": "/profile/"})
    html = resp.data.decode()
    assert resp.status_code == 400 and "<h1>Sign in</h1>" in html and "Error 400" not in html
    assert f'<p class="error" role="alert" id="email-error">{message}</p>' in html
    field = _field(html, "email")
    assert 'aria-invalid="true"' in field and 'aria-describedby="email-error"' in field
    if typed.strip():
        assert f'value="{typed}"' in field  # what was typed stays
    assert 'name="next" type="hidden" value="/profile/"' in html


def test_login_prompt_escapes_what_it_shows_back(client, northwind):
    resp = client.post("/login", data={"email": '"><script>x</script>', "csrf_token": csrf(client)})
    assert resp.status_code == 400 and b"<script>x" not in resp.data and b"&lt;script&gt;x" in resp.data


@pytest.mark.parametrize("typed, message", [
    ("not an email", NOT_AN_EMAIL), ("@@@", NOT_AN_EMAIL),
    ("x" * 5000, "This is too long for an email address: enter one of at most 254 characters."),
    ("", "Enter your email address."),
])
def test_password_step_shows_email_errors_next_to_the_email(app, client, northwind, typed, message):
    resp = client.post("/login/password", data={"email": typed, "password": PASSWORD,
                                                "csrf_token": csrf(client, "/login/password")})
    html = resp.data.decode()
    assert resp.status_code == 400 and "<h1>Enter your password</h1>" in html
    assert f'<p class="error" role="alert" id="email-error">{message}</p>' in html
    field = _field(html, "email")
    assert "readonly" not in field and 'aria-invalid="true"' in field  # the email can be corrected here
    if typed:
        assert f'value="{typed}"' in field
    assert PASSWORD not in html  # a password is never sent back
    with app.app_context():
        assert auditlog.audit_page(directory.get_organization("Northwind Traders"), 1, policy.OPERATOR).total == 0  # no sign-in tried


def test_password_step_asks_for_a_missing_password_inline(client, northwind):
    resp = client.post("/login/password", data={"email": ADMIN, "password": "",
                                                "csrf_token": csrf(client, "/login/password")})
    html = resp.data.decode()
    assert resp.status_code == 400
    assert '<p class="error" role="alert" id="password-error">Enter your password.</p>' in html
    assert f'value="{ADMIN}"' in _field(html, "email")
    assert 'aria-describedby="password-error"' in _field(html, "password")


# -- re-opened callback, error pages for the signed-in --------------------------------------------

def test_reopened_activation_callback_goes_back_to_security(app, client, northwind):
    done = activate_sso(client)
    assert done.status_code == 303 and done.headers["Location"] == "/settings/security"
    again = client.get(done.request.url)
    assert again.status_code == 303 and again.headers["Location"] == "/settings/security"


def test_signed_out_user_reopening_a_callback_is_asked_to_start_again(client, active):  # noqa: F811
    back = sso_sign_in(client, LENA)
    sign_out(client)
    again = client.get(back.request.url)
    assert again.status_code == 400 and b"Start signing in again" in again.data


def test_error_pages_offer_signing_in_only_to_the_signed_out(app, client, northwind):
    assert b"Start signing in again" in client.get("/no-such-page").data
    with app.app_context():
        passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD, role="member")
    password_sign_in(client, "omar.haddad@northwind.example")
    refused = client.get("/settings/security")
    assert refused.status_code == 403 and b"Back to the portal" in refused.data
    assert b"Start signing in again" not in refused.data
    assert b"Start signing in again" not in client.get("/no-such-page").data


# -- a tenant another organisation has bound ------------------------------------------------------

def test_tenant_of_another_organisation_is_refused_without_naming_it(app, client, active, caplog):  # noqa: F811
    with app.app_context():
        directory.create_organization("Northwind Sales", ["sales.example"])
        passwords.create_local_user("admin@sales.example", "Northwind Sales", PASSWORD, role="admin")
    caplog.set_level(logging.WARNING)
    resp = activate_sso(client, admin="admin@sales.example", microsoft_user=LENA)
    page = _text(resp)
    assert resp.status_code == 403
    assert "This Microsoft tenant cannot be connected. Contact the portal's operator." in page
    assert "Northwind Traders" not in page and "another organisation" not in page
    assert "Northwind Traders" in caplog.text and "Northwind Sales" in caplog.text  # the operator's log says which
    with app.app_context():
        assert not directory.get_organization("Northwind Sales").sso_active


# -- copy and details ---------------------------------------------------------------------------

def test_audit_log_shows_words_not_codes(client, active):  # noqa: F811
    assert sso_sign_in(client, "omar.haddad@northwind.example", accept=False).status_code == 403  # declined
    sso_sign_in(client, LENA)
    client.post("/profile/export", data={"csrf_token": csrf(client, "/profile/")})
    submit(client, client.get("/profile/delete"), "Delete my stored copy")
    sign_out(client)
    password_sign_in(client, ADMIN)
    submit(client, client.get("/settings/security"), "Save", checks={"store_profiles": False})  # the setting, off
    submit(client, client.get("/settings/security/profiles/purge"), "Delete all stored copies")
    page = client.get("/settings/audit").data.decode()
    cells = re.findall(r'<td data-label="(?:Action|Outcome|Detail)"[^>]*>([^<]*)</td>', page)
    for label in ("Data downloaded", "Profile copy deleted", "All profile copies deleted", "Stored profiles setting",
                  "Succeeded", "Failed", "with a password", "with Microsoft", "Microsoft error AADSTS65004"):
        assert label in cells, label
    assert not [c for c in cells if re.fullmatch(r"\w*_\w*|success|failure|password|sso", c)], cells


def test_pages_use_no_possessive_on_organisation_names(client, northwind):
    password_sign_in(client, ADMIN)
    explanation = _text(submit(client, client.get("/settings/security"), "Activate SSO"))
    assert "Northwind Traders's" not in explanation and "one of the domains of Northwind Traders" in explanation


def test_admin_consent_steps_without_sso_point_to_no_missing_button(client, northwind):
    password_sign_in(client, ADMIN)
    page = client.get("/settings/security").data.decode()
    consent = page[page.index('id="consent-heading"'):page.index('id="enforce-heading"')]
    assert "Grant admin consent for your organization</button>" not in consent
    assert "button above" not in consent and "Activate single sign-on above" in consent


def test_confirmation_links_have_no_stray_question_mark(client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    profile = client.get("/profile/")
    assert b'href="/profile/delete"' in profile.data and b"/profile/delete?" not in profile.data
    assert follow_link(client, profile, "Delete my stored copy").status_code == 200
    sign_out(client)
    password_sign_in(client, ADMIN)
    security = client.get("/settings/security")
    assert b"/purge?" not in security.data
    assert follow_link(client, security, "Delete all stored copies").status_code == 200


def test_emulator_error_pages_are_styled_and_it_has_a_favicon(client):
    for path, status, words in (("/_entra/no-such-page", 404, b"There is no page at this address"),
                                ("/_entra/organizations/oauth2/v2.0/token", 405, b"does not take that kind")):
        resp = client.get(path)
        assert resp.status_code == status and words in _text(resp).encode()
        assert b'href="/_entra/static/emulator.css"' in resp.data and b'href="/_entra/static/favicon.svg"' in resp.data
    icon = client.get("/_entra/static/favicon.svg")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    graph = client.get("/_entra/graph/v1.0/no-such-resource")  # Graph answers in JSON, as Graph does
    assert graph.status_code == 404 and graph.json["error"]["code"] == "NotFound"


def test_demo_start_up_message_names_both_admins(runner):
    result = runner.invoke(args=["demo", "--no-serve"])
    assert result.exit_code == 0
    assert "admin@northwind.example" in result.output and "admin@fabrikam.example" in result.output


# -- the portal's own name, logo and links ------------------------------------------------------

def _branded(tmp_path, database_uri, **config):
    settings = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48, **config}
    if database_uri:
        settings["SQLALCHEMY_DATABASE_URI"] = database_uri
    return create_app(settings, instance_path=str(tmp_path / "instance"))


def test_defaults_stay_as_they_were(client):
    page = client.get("/login").data.decode()
    assert "<title>Sign in · Customer Portal</title>" in page and ">Customer Portal</a>" in page
    assert "<footer" not in page and "/logo" not in page
    assert client.get("/logo").status_code == 404


def test_portal_name_logo_and_links_on_every_page(tmp_path, database_uri):
    (tmp_path / "instance").mkdir()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8" height="8"/></svg>'
    (tmp_path / "instance" / "logo.svg").write_bytes(svg)
    app = _branded(tmp_path, database_uri, PORTAL_NAME="Contoso Partner Hub", PORTAL_LOGO="logo.svg",
                   SUPPORT_URL="https://contoso.example/support", PRIVACY_URL="https://contoso.example/privacy")
    client = app.test_client()
    with app.app_context():
        extensions.ensure_schema()
        directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user(ADMIN, "Northwind Traders", PASSWORD, role="admin")
    footer = ('<a href="https://contoso.example/support">Support</a>',
              '<a href="https://contoso.example/privacy">Privacy notice</a>')
    for path in ("/login", "/login/password", "/no-such-page"):
        page = client.get(path).data.decode()
        assert "· Contoso Partner Hub</title>" in page and "Customer Portal" not in page, path
        assert '<img src="/logo" alt="" height="32">Contoso Partner Hub</a>' in page, path
        assert all(link in page for link in footer), path
    logo = client.get("/logo")
    assert logo.status_code == 200 and logo.data == svg and logo.mimetype == "image/svg+xml"
    assert "sandbox" in logo.headers["Content-Security-Policy"]
    password_sign_in(client, ADMIN)
    explanation = submit(client, client.get("/settings/security"), "Activate SSO").data.decode()
    assert "What Contoso Partner Hub reads" in explanation
    assert "Contoso Partner Hub keeps no Microsoft tokens" in explanation
    assert '<a href="https://contoso.example/privacy">privacy notice</a>' in explanation
    clients = app.extensions["entra_emulator"].clients  # the app's name on the emulated Microsoft pages
    assert [c["name"] for c in clients.values()] == ["Contoso Partner Hub (demo)"]


@pytest.mark.parametrize("config, words", [
    ({"PORTAL_NAME": ""}, "PORTAL_NAME is 1 to 80 printable characters"),
    ({"PORTAL_NAME": "x" * 81}, "PORTAL_NAME is 1 to 80 printable characters"),
    ({"PORTAL_LOGO": "missing.png"}, "does not exist"),
    ({"PORTAL_LOGO": "../secret_key.png"}, "names a file in the instance folder"),
    ({"PORTAL_LOGO": "secret_key"}, "names a file in the instance folder"),
    ({"SUPPORT_URL": "javascript:alert(1)"}, "SUPPORT_URL is a full https: or http: or mailto: address"),
    ({"PRIVACY_URL": "mailto:dpo@contoso.example"}, "PRIVACY_URL is a full https: or http: address"),
    ({"PRIVACY_URL": "/privacy"}, "PRIVACY_URL is a full"),
])
def test_bad_branding_settings_stop_start_up_with_the_fix(tmp_path, database_uri, config, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        _branded(tmp_path, database_uri, **config)


def test_support_may_be_an_email_address(tmp_path, database_uri):
    app = _branded(tmp_path, database_uri, SUPPORT_URL="mailto:help@contoso.example")
    assert b'<a href="mailto:help@contoso.example">Support</a>' in app.test_client().get("/login").data
