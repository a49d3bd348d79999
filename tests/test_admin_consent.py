"""Admin consent for the organisation: the grant round trip, its failures and forged callbacks."""
from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from domain import directory, passwords, sessions
from helpers import (FABRIKAM_TID, NORTHWIND_TID, PASSWORD, activate_sso, csrf, password_sign_in, submit,
                     through_microsoft)
from models import AuditEvent, Organization, db

GRANT = "Grant admin consent for your organization"
CALLBACK = "/auth/admin-consent/callback"


def _consent(app, org_id):
    with app.app_context():
        org = db.session.get(Organization, org_id)
        return org.admin_consent_at, org.admin_consent_by_id


def _consent_events(app):
    with app.app_context():
        return [(e.outcome, e.detail) for e in db.session.execute(
            db.select(AuditEvent).where(AuditEvent.action == "admin_consent").order_by(AuditEvent.id)).scalars()]


def _start_grant(client):
    """Settings → SECURITY → Grant admin consent: the redirect to Microsoft and the state it carries."""
    go = submit(client, client.get("/settings/security"), GRANT)
    assert go.status_code == 303, go.data[:300]
    return go, parse_qs(urlsplit(go.headers["Location"]).query)["state"][0]


def _sign_out_at_microsoft(client):
    assert client.get("/_entra/organizations/oauth2/v2.0/logout").status_code == 200


def test_admin_grants_consent_through_microsoft(app, client, emulator, active):
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/security")
    assert b"Not confirmed" in page.data and b"Enterprise applications" in page.data
    assert b"Grant admin consent for" in page.data and b"Microsoft Graph permission" in page.data
    go, state = _start_grant(client)
    url = urlsplit(go.headers["Location"])
    assert url.path == f"/_entra/{NORTHWIND_TID}/v2.0/adminconsent"
    query = parse_qs(url.query)
    assert query == {"client_id": [app.config["ENTRA_CLIENT_ID"]], "scope": ["https://graph.microsoft.com/.default"],
                     "redirect_uri": ["http://portal.test/auth/admin-consent/callback"], "state": [state]}
    back = through_microsoft(client, go)
    assert back.status_code == 303 and back.headers["Location"].endswith("/settings/security")
    page = client.get("/settings/security")
    assert b"Granted" in page.data and b"Not confirmed" not in page.data
    assert b"admin@northwind.example" in page.data and GRANT.encode() not in page.data
    at, by = _consent(app, active)
    assert at is not None and by is not None
    assert emulator.has_admin_consent(NORTHWIND_TID, app.config["ENTRA_CLIENT_ID"])
    assert _consent_events(app) == [("success", NORTHWIND_TID)]


def test_after_admin_consent_members_are_asked_nothing(app, client, emulator, active):
    emulator.set_tenant(NORTHWIND_TID, users_may_consent=False)  # only admins may approve apps
    member = app.test_client()
    refused = through_microsoft(member, submit(member, member.post(
        "/login", data={"email": "lena.fischer@northwind.example", "csrf_token": csrf(member)}),
        "Continue to Microsoft"), user="lena.fischer@northwind.example")
    assert refused.status_code == 403 and b"AADSTS90094" in refused.data

    password_sign_in(client, "admin@northwind.example")
    assert through_microsoft(client, _start_grant(client)[0]).status_code == 303

    # No explanation at the portal; Microsoft (which remembers Lena) answers with a code, no consent page.
    go = member.post("/login", data={"email": "lena.fischer@northwind.example", "csrf_token": csrf(member)})
    assert go.status_code == 303 and "/_entra/" in go.headers["Location"]
    answer = member.get(go.headers["Location"])
    assert answer.status_code == 302 and answer.headers["Location"].startswith("http://portal.test/auth/callback?code=")
    assert member.get(answer.headers["Location"]).status_code == 303
    assert b"Lena Fischer" in member.get("/profile/").data


def test_admin_cancels_at_microsoft(app, client, emulator, active):
    password_sign_in(client, "admin@northwind.example")
    go, _ = _start_grant(client)
    consent_page = client.get(go.headers["Location"])
    assert b'name="step" value="adminconsent"' in consent_page.data
    to_portal = submit(client, consent_page, "Cancel")
    # Entra sends admin_consent=True on errors too: the portal must read `error` first.
    assert "admin_consent=True" in to_portal.headers["Location"] and "error=" in to_portal.headers["Location"]
    resp = client.get(to_portal.headers["Location"])
    assert resp.status_code == 403
    for text in (b"Admin consent was declined", b"AADSTS65004", b"Enterprise applications", b"Accept"):
        assert text in resp.data, text
    assert _consent(app, active) == (None, None)
    assert not emulator.has_admin_consent(NORTHWIND_TID, app.config["ENTRA_CLIENT_ID"])
    assert _consent_events(app) == [("failure", "entra_AADSTS65004")]
    assert b"Not confirmed" in client.get("/settings/security").data


def test_portal_admin_who_is_no_entra_admin_gets_90094_explained(app, client, active):
    with app.app_context():
        passwords.create_local_user("lena.fischer@northwind.example", "Northwind Traders", PASSWORD, role="admin")
    _sign_out_at_microsoft(client)  # Microsoft forgets Nadia, the Entra admin who activated SSO
    password_sign_in(client, "lena.fischer@northwind.example")
    resp = through_microsoft(client, _start_grant(client)[0], user="lena.fischer@northwind.example")
    assert resp.status_code == 403
    for text in (b"cannot grant admin consent", b"AADSTS90094", b"Cloud Application Administrator",
                 b"Enterprise applications"):
        assert text in resp.data, text
    assert _consent(app, active) == (None, None)
    assert _consent_events(app) == [("failure", "entra_AADSTS90094")]


def test_box_ticked_at_sign_in_is_not_confirmed_until_the_round_trip(app, client, emulator, northwind):
    consent = submit(client, (password_sign_in(client, "admin@northwind.example"),
                              client.get("/settings/security"))[1], "Activate SSO")
    assert b"Consent on behalf of your organization" in b" ".join(consent.data.split())  # the explanation says so
    through_microsoft(client, submit(client, consent, "Continue to Microsoft"), user="admin@northwind.example",
                      on_behalf=True)
    assert emulator.has_admin_consent(NORTHWIND_TID, app.config["ENTRA_CLIENT_ID"])
    page = client.get("/settings/security")
    assert b"Not confirmed" in page.data and b"cannot see that" in page.data
    assert _consent(app, northwind) == (None, None)

    go, _ = _start_grant(client)
    at_microsoft = client.get(go.headers["Location"])
    # No further prompt: Microsoft answers with the callback at once.
    assert at_microsoft.status_code == 302
    assert at_microsoft.headers["Location"].startswith("http://portal.test" + CALLBACK + "?admin_consent=True")
    assert client.get(at_microsoft.headers["Location"]).status_code == 303
    assert b"Granted" in client.get("/settings/security").data
    assert _consent(app, northwind)[0] is not None


def test_grant_needs_sso_active(app, client, northwind):
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/security")
    assert b"Not granted" in page.data and GRANT.encode() not in page.data
    resp = client.post("/settings/security/admin-consent", data={"csrf_token": csrf(client, "/settings/security")})
    assert resp.status_code == 409 and b"Activate single sign-on first" in resp.data
    assert client.post("/settings/security/admin-consent", data={}).status_code == 400  # no CSRF token


# -- forged callbacks: 400 (or 403), nothing recorded ------------------------------------------

def _ok(state, tenant=NORTHWIND_TID):
    return {"admin_consent": "True", "tenant": tenant, "scope": "https://graph.microsoft.com/User.Read",
            "state": state}


def test_callback_without_state_or_with_a_foreign_state(app, client, active):
    password_sign_in(client, "admin@northwind.example")
    _, state = _start_grant(client)
    other = app.test_client()  # the same admin in another browser
    password_sign_in(other, "admin@northwind.example")
    for c, query in ((client, {"admin_consent": "True", "tenant": NORTHWIND_TID}),
                     (client, _ok("made-up-state")),
                     (client, {**_ok(state), "state": [state, state]}),
                     (other, _ok(state))):
        resp = c.get(CALLBACK, query_string=query)
        assert resp.status_code == 400 and b"Nothing was recorded" in resp.data
    assert _consent(app, active) == (None, None) and _consent_events(app) == []


def test_state_is_single_use(app, client, active):
    password_sign_in(client, "admin@northwind.example")
    # A state is gone once presented, even when the answer was an error.
    _, state = _start_grant(client)
    declined = {**_ok(state), "error": "consent_required", "error_description": "AADSTS65004: declined"}
    assert client.get(CALLBACK, query_string=declined).status_code == 403
    assert client.get(CALLBACK, query_string=_ok(state)).status_code == 400
    _, state = _start_grant(client)
    assert client.get(CALLBACK, query_string=_ok(state)).status_code == 303
    events = _consent_events(app)
    assert events == [("failure", "entra_AADSTS65004"), ("success", NORTHWIND_TID)]
    replay = client.get(CALLBACK, query_string=_ok(state))
    assert replay.status_code == 400 and _consent_events(app) == events


def test_expired_state(app, client, active):
    password_sign_in(client, "admin@northwind.example")
    _, state = _start_grant(client)
    with client.session_transaction() as sess:
        waiting = sess["admin_consents"]
        waiting[state]["started"] -= sessions.PENDING_MAX_AGE + 1
        sess["admin_consents"] = waiting  # an in-place change alone does not mark the session for saving
    resp = client.get(CALLBACK, query_string=_ok(state))
    assert resp.status_code == 400 and b"expired" in resp.data
    assert _consent(app, active) == (None, None) and _consent_events(app) == []


@pytest.mark.parametrize("tenant", [FABRIKAM_TID, "", "not-a-guid"])
def test_edited_tenant_records_nothing(app, client, active, tenant):
    password_sign_in(client, "admin@northwind.example")
    _, state = _start_grant(client)
    resp = client.get(CALLBACK, query_string=_ok(state, tenant))
    assert resp.status_code == 403 and b"nothing was recorded" in resp.data
    assert _consent(app, active) == (None, None)
    assert _consent_events(app) == [("failure", "tenant_mismatch")]


def test_state_of_one_organisation_is_useless_for_another(app, client, emulator, active):
    password_sign_in(client, "admin@northwind.example")
    _, northwind_state = _start_grant(client)
    with app.app_context():
        fabrikam = directory.create_organization("Fabrikam Research", ["fabrikam.example"]).id
        passwords.create_local_user("admin@fabrikam.example", "Fabrikam Research", PASSWORD, role="admin")
    other = app.test_client()
    activate_sso(other, admin="admin@fabrikam.example")
    _start_grant(other)
    for tenant in (NORTHWIND_TID, FABRIKAM_TID):
        assert other.get(CALLBACK, query_string=_ok(northwind_state, tenant)).status_code == 400
    assert _consent(app, active) == (None, None) and _consent(app, fabrikam) == (None, None)


def test_members_cannot_grant_and_are_logged(app, client, active, caplog):
    with app.app_context():
        passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD, role="member")
    password_sign_in(client, "admin@northwind.example")
    _, state = _start_grant(client)
    with client.session_transaction() as sess:
        pending = dict(sess["admin_consents"][state])
    member = app.test_client()
    password_sign_in(member, "omar.haddad@northwind.example")
    caplog.set_level(logging.WARNING)
    token = csrf(member, "/")
    assert member.post("/settings/security/admin-consent", data={"csrf_token": token}).status_code == 403
    # Even holding the admin's state (it cannot, short of the secret key), a member finishes nothing.
    with member.session_transaction() as sess:
        sess["admin_consents"] = {state: pending}
    resp = member.get(CALLBACK, query_string=_ok(state))
    assert resp.status_code == 403
    assert _consent(app, active) == (None, None) and _consent_events(app) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("refused on '/settings/security/admin-consent'" in w for w in warnings)
    assert any("Admin-consent callback for user" in w for w in warnings)
    assert not any("omar" in w or "northwind.example" in w for w in warnings)


def test_deactivating_sso_clears_admin_consent(app, client, active):
    password_sign_in(client, "admin@northwind.example")
    through_microsoft(client, _start_grant(client)[0])
    assert _consent(app, active)[0] is not None
    submit(client, client.get("/settings/security"), "Deactivate SSO")
    assert _consent(app, active) == (None, None)
    assert b"Not granted" in client.get("/settings/security").data
