"""Settings: admins only, GENERAL and SECURITY tabs, the Activate SSO form."""
from __future__ import annotations

from domain import passwords
from helpers import PASSWORD, csrf, password_sign_in


def test_settings_link_and_tabs_for_admins(client, northwind):
    password_sign_in(client, "admin@northwind.example")
    home = client.get("/")
    assert b'class="settings-link">Settings</a>' in home.data
    general = client.get("/settings/general")
    assert b"GENERAL" in general.data and b"northwind.example" in general.data
    security = client.get("/settings/security")
    assert b"Single sign-on" in security.data and b"Off" in security.data
    assert b">Activate SSO</button>" in security.data


def test_members_get_403_on_settings(app, client, northwind):
    with app.app_context():
        passwords.create_local_user("member@northwind.example", "Northwind Traders", PASSWORD, role="member")
    password_sign_in(client, "member@northwind.example")
    assert b"settings-link" not in client.get("/").data
    for path in ("/settings/general", "/settings/security"):
        assert client.get(path).status_code == 403
    token = csrf(client, "/")
    assert client.post("/settings/security/sso/activate", data={"csrf_token": token}).status_code == 403


def test_settings_need_sign_in(client):
    resp = client.get("/settings/security")
    assert resp.status_code == 302 and "/login?next=" in resp.headers["Location"]


def test_activate_sso_rejects_a_missing_csrf_token(client, northwind):
    password_sign_in(client, "admin@northwind.example")
    resp = client.post("/settings/security/sso/activate", data={})
    assert resp.status_code == 400
    assert b"Form expired" in resp.data


def test_activate_sso_shows_the_consent_explanation(client, northwind):
    password_sign_in(client, "admin@northwind.example")
    resp = client.post("/settings/security/sso/activate", data={"csrf_token": csrf(client, "/settings/security")})
    assert resp.status_code == 200
    for word in (b"Email address", b"Job title", b"Company", b"Department", b"Phone", b"address", b"language",
                 b"Profile image", b"User.Read", b"Continue to Microsoft"):
        assert word in resp.data
    # The mail alias is read too, only to match a provisioned account, and said so.
    assert b"Also your mail alias (<code>mailNickname</code>), only to match the account" in resp.data
    assert b"It is not kept." in resp.data
