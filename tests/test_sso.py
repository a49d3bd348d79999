"""Single sign-on end to end: the portal's real MSAL path against the emulator."""
from __future__ import annotations

import pytest

from domain import passwords
from helpers import (FABRIKAM_TID, NORTHWIND_TID, activate_sso, password_sign_in, sign_in_state, sign_out, signed_in,
                     sso_sign_in, start_sso, submit, through_microsoft)
from models import AuditEvent, Organization, User, db


# -- activation ---------------------------------------------------------------------------------

def test_admin_activates_sso_and_the_tenant_is_bound(app, client, northwind):
    resp = activate_sso(client)
    assert resp.status_code == 303
    page = client.get("/settings/security")
    assert b"Active" in page.data and NORTHWIND_TID.encode() in page.data
    assert b"admin@northwind.example" in page.data  # who activated
    assert b">Deactivate SSO</button>" in page.data
    with app.app_context():
        org = db.session.get(Organization, northwind)
        assert org.tenant_id == NORTHWIND_TID and org.sso_active and org.sso_activated_at
        admin = org.sso_activated_by
        assert (admin.tenant_id, admin.object_id) == (NORTHWIND_TID, "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01")
        actions = [e.action for e in db.session.execute(db.select(AuditEvent)).scalars()]
        assert "tenant_bound" in actions and "sso_activate" in actions


def test_activation_with_an_account_of_another_domain_changes_nothing(app, client, northwind):
    before = sign_in_state(app)
    resp = activate_sso(client, microsoft_user="admin@fabrikam.example")
    assert resp.status_code == 403
    assert b"does not have a verified email" in resp.data
    after = sign_in_state(app)
    assert after[3] == before[3] and after[1] == before[1]  # organisation unbound, nothing stored
    assert b"Off" in client.get("/settings/security").data


def test_activation_declined_at_microsoft_leaves_sso_off(app, client, northwind):
    resp = activate_sso(client, accept=False)
    assert resp.status_code == 403 and b"Consent was declined" in resp.data and b"AADSTS65004" in resp.data
    with app.app_context():
        assert db.session.get(Organization, northwind).tenant_id is None


def test_deactivate_returns_to_off_and_password_sign_in_works(client, active):
    password_sign_in(client, "admin@northwind.example")
    submit(client, client.get("/settings/security"), "Deactivate SSO")
    assert b"Off" in client.get("/settings/security").data
    sign_out(client)
    resp = client.post("/login", data={"email": "lena.fischer@northwind.example",
                                       "csrf_token": __import__("helpers").csrf(client)})
    assert b"Enter your password" in resp.data


def test_cli_deactivate_sso_is_the_operators_way_back(app, runner, active):
    result = runner.invoke(args=["deactivate-sso", "--org", "Northwind Traders"])
    assert result.exit_code == 0
    with app.app_context():
        assert not db.session.get(Organization, active).sso_active
    assert runner.invoke(args=["deactivate-sso", "--org", "Nobody"]).exit_code == 1


# -- member sign-in -----------------------------------------------------------------------------

def test_member_first_sign_in_explains_consent_then_shows_profile(app, client, active):
    resp = client.post("/login", data={"email": "lena.fischer@northwind.example",
                                       "csrf_token": __import__("helpers").csrf(client)})
    assert b"Before you continue to Microsoft" in resp.data and b"User.Read" in resp.data
    go = submit(client, resp, "Continue to Microsoft")
    location = go.headers["Location"]
    assert "login_hint=lena.fischer%40northwind.example" in location and "domain_hint=northwind.example" in location
    assert "code_challenge_method=S256" in location
    back = through_microsoft(client, go, user="lena.fischer@northwind.example")
    assert back.status_code == 303
    page = client.get("/profile/")
    for text in (b"Lena Fischer", b"Sales Manager", b"Northwind Traders", b"Sales", b"+1 555 0102",
                 b"12 Harbour Road", b"Seattle", NORTHWIND_TID.encode(), b"1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"):
        assert text in page.data, text
    photo = client.get("/profile/photo")
    assert photo.status_code == 200 and photo.headers["Content-Type"] == "image/png"
    assert photo.headers["X-Content-Type-Options"] == "nosniff"
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.object_id == "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")
                                  ).scalar_one()
        assert user.tenant_id == NORTHWIND_TID and user.role == "member" and user.password_hash is None


def test_second_sign_in_explains_again_until_admin_consent_and_calls_microsoft_three_times(app, client, emulator,
                                                                                          active):
    sso_sign_in(client, "lena.fischer@northwind.example")
    sign_out(client)
    emulator.requests.clear()
    resp = client.post("/login", data={"email": "lena.fischer@northwind.example",
                                       "csrf_token": __import__("helpers").csrf(client)})
    # No admin consent yet: the explanation again (what the prompt shows depends on the organisation only).
    assert resp.status_code == 200 and b"Before you continue to Microsoft" in resp.data
    back = through_microsoft(client, submit(client, resp, "Continue to Microsoft"),
                             user="lena.fischer@northwind.example")
    assert back.status_code == 303 and signed_in(client)
    calls = [(method, url.split("?")[0]) for method, url, _ in emulator.requests]
    assert calls == [
        ("POST", "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"),
        ("GET", "https://graph.microsoft.com/v1.0/me"),
        ("GET", "https://graph.microsoft.com/v1.0/me/photo/$value"),
    ]
    assert all(timeout for _, _, timeout in emulator.requests)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 2  # admin + Lena, once


def test_login_prompt_answers_known_and_unknown_emails_alike(client, active):
    sso_sign_in(client, "lena.fischer@northwind.example")  # Lena has an account now
    sign_out(client)
    token = __import__("helpers").csrf(client)
    known = client.post("/login", data={"email": "lena.fischer@northwind.example", "csrf_token": token})
    unknown = client.post("/login", data={"email": "nobody.here@northwind.example", "csrf_token": token})
    assert known.status_code == unknown.status_code == 200
    assert known.data.replace(b"lena.fischer", b"nobody.here") == unknown.data


def test_user_without_photo_has_profile_but_no_photo(client, active):
    assert sso_sign_in(client, "omar.haddad@northwind.example").status_code == 303
    assert b"Omar Haddad" in client.get("/profile/").data
    assert client.get("/profile/photo").status_code == 404


def test_existing_local_user_is_linked_at_first_sso_sign_in(app, client, active):
    from helpers import PASSWORD
    with app.app_context():
        passwords.create_local_user("lena.fischer@northwind.example", "Northwind Traders", PASSWORD, role="member")
    sso_sign_in(client, "lena.fischer@northwind.example")
    with app.app_context():
        users = db.session.execute(db.select(User).where(User.organization_id == active)).scalars().all()
        assert len(users) == 2
        lena = [u for u in users if u.password_hash and u.role == "member"][0]
        assert lena.object_id == "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"


def test_identity_is_tid_oid_not_email(app, client, emulator, active):
    sso_sign_in(client, "lena.fischer@northwind.example")
    sign_out(client)
    lena = emulator.directory.user_by_upn("lena.fischer@northwind.example")
    lena.profile["mail"] = "lena.new@northwind.example"
    sso_sign_in(client, "lena.fischer@northwind.example")
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 2
    assert b"lena.new@northwind.example" in client.get("/profile/").data


def test_sso_session_is_rotated(client, active):
    client.get("/login")
    before = client.get_cookie("session", domain="portal.test").value
    sso_sign_in(client, "lena.fischer@northwind.example")
    assert client.get_cookie("session", domain="portal.test").value != before


def test_sign_out_goes_through_microsoft_and_back(client, active):
    sso_sign_in(client, "lena.fischer@northwind.example")
    resp = sign_out(client)
    assert resp.status_code == 303 and "/_entra/organizations/oauth2/v2.0/logout" in resp.headers["Location"]
    back = client.get(resp.headers["Location"])
    assert back.status_code in (302, 303) and back.headers["Location"].endswith("/login")
    assert not signed_in(client)


def test_account_of_another_tenant_is_refused(app, client, active):
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example", user="ines.moreau@fabrikam.example")
    assert resp.status_code == 403 and b"another organisation" in resp.data
    assert sign_in_state(app) == before and not signed_in(client)


# -- Entra's errors -----------------------------------------------------------------------------

def test_member_declines_consent(app, client, active):
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example", accept=False)
    assert resp.status_code == 403 and b"Consent was declined" in resp.data
    assert sign_in_state(app) == before and not signed_in(client)


def test_tenant_that_needs_admin_approval(app, client, emulator, active):
    emulator.set_tenant(NORTHWIND_TID, users_may_consent=False)
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example")
    assert resp.status_code == 403 and b"administrator must approve" in resp.data and b"AADSTS90094" in resp.data
    assert sign_in_state(app) == before


def test_user_not_assigned(app, client, emulator, active):
    emulator.set_tenant(NORTHWIND_TID, assignment_required=True, assigned=[])
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example")
    assert resp.status_code == 403 and b"not assigned" in resp.data and b"AADSTS50105" in resp.data
    assert sign_in_state(app) == before


def test_account_not_in_tenant_error_is_explained(app, client, active):
    go = start_sso(client, "lena.fischer@northwind.example")
    state = dict(p.split("=", 1) for p in go.headers["Location"].split("?", 1)[1].split("&"))["state"]
    resp = client.get("/auth/callback", query_string={
        "error": "access_denied", "state": state,
        "error_description": "AADSTS50020: User account from identity provider does not exist in tenant."})
    assert resp.status_code == 403 and b"not in this organisation" in resp.data


def test_bad_client_secret(app, client, emulator, active):
    emulator.clients[app.config["ENTRA_CLIENT_ID"]]["secret"] = "rotated-elsewhere"
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example")
    assert resp.status_code == 502 and b"AADSTS7000215" in resp.data and b"ENTRA_CLIENT_SECRET" in resp.data
    assert sign_in_state(app) == before


def test_unregistered_redirect_uri_stops_at_microsoft(app, client, emulator, active):
    emulator.clients[app.config["ENTRA_CLIENT_ID"]]["redirect_uris"] = ["https://elsewhere.example/cb"]
    resp = sso_sign_in(client, "lena.fischer@northwind.example")
    assert resp.status_code == 400 and b"AADSTS50011" in resp.data  # Microsoft's own page, no redirect


def test_code_reused_is_explained(app, client, emulator, active):
    first = through_microsoft(client, start_sso(client, "lena.fischer@northwind.example"),
                              user="lena.fischer@northwind.example")
    assert first.status_code == 303
    used_code = first.request.args["code"]
    sign_out(client)
    go = start_sso(client, "lena.fischer@northwind.example")
    state = dict(p.split("=", 1) for p in go.headers["Location"].split("?", 1)[1].split("&"))["state"]
    before = sign_in_state(app)
    resp = client.get("/auth/callback", query_string={"code": used_code, "state": state})
    assert resp.status_code == 400 and b"already used" in resp.data and b"AADSTS54005" in resp.data
    assert sign_in_state(app) == before


# -- the emulator misbehaving -------------------------------------------------------------------

FAULTS = {
    "bad signature": ({"id_token_alg": "foreign-key"}, 401),
    "alg none": ({"id_token_alg": "none"}, 401),
    "HS256 with the public key": ({"id_token_alg": "HS256-public"}, 401),
    "unpublished kid": ({"id_token_alg": "unpublished-kid"}, 401),
    "wrong aud": ({"id_token_claims": {"aud": "00000000-0000-0000-0000-000000000001"}}, 401),
    "wrong iss": ({"id_token_claims": {"iss": f"https://login.microsoftonline.com/{FABRIKAM_TID}/v2.0"}}, 401),
    "v1 issuer": ({"id_token_claims": {"iss": f"https://sts.windows.net/{NORTHWIND_TID}/"}}, 401),
    "expired": ({"id_token_claims": {"exp": 1_000_000_000, "iat": 999_990_000, "nbf": 999_990_000}}, 401),
    "future nbf": ({"id_token_claims": {"nbf": 4_000_000_000}}, 401),
    "future iat": ({"id_token_claims": {"iat": 4_000_000_000}}, 401),
    "wrong nonce": ({"id_token_claims": {"nonce": "0" * 64}}, 401),
    "missing nonce": ({"id_token_claims": {"nonce": None}}, 401),
    "other tenant": ({"id_token_claims": {"tid": FABRIKAM_TID,
                                          "iss": f"https://login.microsoftonline.com/{FABRIKAM_TID}/v2.0"}}, 403),
    "personal account": ({"id_token_claims": {
        "tid": "9188040d-6c67-4c5b-b112-36a304b66dad",
        "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"}}, 403),
    "me id is not oid": ({"graph_me": {"id": "99999999-9999-4999-8999-999999999999"}}, 502),
    "graph 500": ({"graph_status": 500}, 502),
    "graph timeout": ({"timeout": {"graph.microsoft.com"}}, 504),
    "token timeout": ({"timeout": {"login.microsoftonline.com/organizations/oauth2/v2.0/token"}}, 504),
    "non-JSON token response": ({"token_response": (200, "<html>oops</html>", "text/html")}, 502),
    "token endpoint 500": ({"token_response": (500, "<html>down</html>", "text/html")}, 502),
}


@pytest.mark.parametrize("name", FAULTS)
def test_misbehaving_microsoft_ends_with_no_session_and_nothing_stored(app, client, emulator, active, name):
    fault, status = FAULTS[name]
    emulator.faults.update(fault)
    before = sign_in_state(app)
    resp = sso_sign_in(client, "lena.fischer@northwind.example")
    assert resp.status_code == status, (name, resp.data[:300])
    assert b"Error %d" % status in resp.data
    assert sign_in_state(app) == before
    assert not signed_in(client)
    with app.app_context():
        event = db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id.desc())).scalars().first()
        assert (event.action, event.outcome) == ("sign_in", "failure")


def test_signing_key_rotation_is_picked_up(client, emulator, active):
    sso_sign_in(client, "lena.fischer@northwind.example")  # the portal has cached the keys now
    sign_out(client)
    emulator.rotate_signing_key()
    assert sso_sign_in(client, "lena.fischer@northwind.example").status_code == 303
    assert signed_in(client)
