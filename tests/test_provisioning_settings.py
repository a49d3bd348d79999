"""Settings → SECURITY → User provisioning (SCIM): generate, rotate, turn off, the counts, the admin group;
admins only, only while single sign-on is active, through the real routes."""
from __future__ import annotations

import hashlib
import re

import pytest

from helpers import (FABRIKAM_TID, csrf, database_bytes, forms, password_sign_in, provisioning_token, scim_call,
                     scim_group, scim_user, sso_sign_in, submit)
from models import AuditEvent, Organization, ScimGroup, User, db

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"


def _org(app, org_id: int) -> Organization:
    with app.app_context():
        org = db.session.get(Organization, org_id)
        db.session.expunge(org)
        return org


def _token_of(page) -> str:
    match = re.search(r'<input id="secret-token" type="text" readonly value="([A-Za-z0-9_-]+)"', page.data.decode())
    assert match, page.data.decode()[:3000]
    return match.group(1)


def _valid(app, token: str) -> bool:
    """Whether Entra's provisioning service gets in with this token (the endpoint answers 401 otherwise)."""
    resp = scim_call(app.test_client(), token, "GET", "ServiceProviderConfig")
    assert resp.status_code in (200, 401), resp.status_code
    return resp.status_code == 200


def _actions(app) -> list[str]:
    with app.app_context():
        return [e.action for e in db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()]


def _block(page) -> str:
    text = page.data.decode()
    start = text.index('id="provisioning"')
    return text[start:text.index("</section>", start)]


@pytest.fixture
def admin(app, active):
    client = app.test_client()
    password_sign_in(client, ADMIN)
    return client


def _generate(admin):
    return submit(admin, admin.get("/settings/security"), "Generate token")


def test_generate_shows_the_token_once_and_stores_only_its_hash(app, admin, active):
    block = _block(admin.get("/settings/security"))
    assert "Status: <strong class=\"status-off\">Off</strong>" in block and "Generate token" in block
    page = _generate(admin)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "Location" not in page.headers  # the token is in this response's body only, never in a URL
    token = _token_of(page)
    assert len(token) >= 64 and "it will not be shown again" in page.data.decode()
    assert 'id="tenant-url" type="text" readonly value="http://portal.test/scim/v2/"' in page.data.decode()
    org = _org(app, active)
    assert org.scim_token_hash == hashlib.sha256(token.encode()).hexdigest() and org.scim_token_created_at
    assert token.encode() not in database_bytes(app)
    # Back on SECURITY: on, the Tenant URL and the facts, but never the token again.
    security = admin.get("/settings/security")
    block = _block(security)
    assert token not in security.data.decode()
    assert "status-on\">On</strong>" in block and "<code>http://portal.test/scim/v2/</code>" in block
    assert "<dt>Entra last called</dt><dd>never</dd>" in block
    assert "<dt>Provisioned users</dt><dd>0</dd>" in block and "<dt>Provisioned groups</dt><dd>0</dd>" in block
    assert "Rotate token…" in block and ">Turn off</button>" in block and "Generate token" not in block
    # Entra's first call gets in with the token, and the block says when it called.
    assert _valid(app, token)
    assert "<dt>Entra last called</dt><dd>never</dd>" not in _block(admin.get("/settings/security"))
    assert "scim_token_generated" in _actions(app)
    assert "Provisioning token generated" in admin.get("/settings/audit").data.decode()


def test_tenant_url_follows_the_configured_address_not_the_request(app, admin, active):
    # (https://portal.example.com/scim/v2/ in the production lane.)
    page = admin.post("/settings/security/provisioning/token", data={"csrf_token": csrf(admin, "/settings/security")},
                      headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert 'value="http://portal.test/scim/v2/"' in page.data.decode() and "evil" not in page.data.decode()


def test_rotate_asks_first_and_the_old_token_stops_working_at_once(app, admin, active):
    old = _token_of(_generate(admin))
    confirm = admin.get("/settings/security/provisioning/rotate")
    assert confirm.status_code == 200 and "stops working at once" in confirm.data.decode()
    assert _valid(app, old)  # opening the question changes nothing
    page = submit(admin, confirm, "Rotate token")
    new = _token_of(page)
    assert new != old and page.headers["Cache-Control"] == "no-store"
    assert not _valid(app, old) and _valid(app, new)
    assert _actions(app)[-1] == "scim_token_rotated"


def test_turn_off_forgets_the_token(app, admin, active):
    token = _token_of(_generate(admin))
    page = submit(admin, admin.get("/settings/security"), "Turn off", follow_redirects=True)
    assert "User provisioning is off" in page.data.decode()
    assert not _valid(app, token) and _org(app, active).scim_token_hash is None
    assert "Generate token" in _block(page)
    assert _actions(app)[-1] == "scim_turned_off"


def test_members_are_refused_and_nothing_changes(app, admin, active):
    token = _token_of(_generate(admin))
    member = app.test_client()
    sso_sign_in(member, LENA)
    assert member.get("/settings/security").status_code == 403
    assert member.get("/settings/security/provisioning/rotate").status_code == 403
    for path in ("/settings/security/provisioning/token", "/settings/security/provisioning/off",
                 "/settings/security/provisioning/admin-group"):
        resp = member.post(path, data={"csrf_token": csrf(member, "/"), "group": ""})
        assert resp.status_code == 403 and b"secret-token" not in resp.data
    assert _valid(app, token)
    signed_out = app.test_client()
    assert signed_out.post("/settings/security/provisioning/token").status_code in (302, 400, 401)
    assert _valid(app, token)


def test_a_post_without_the_csrf_token_is_refused(app, admin, active):
    resp = admin.post("/settings/security/provisioning/token", data={})
    assert resp.status_code == 400 and b"secret-token" not in resp.data
    assert _org(app, active).scim_token_hash is None


def test_without_single_sign_on_the_block_explains_and_posts_are_refused(app, northwind):
    client = app.test_client()
    password_sign_in(client, ADMIN)
    block = _block(client.get("/settings/security"))
    assert "User provisioning needs single sign-on" in block and "Generate token" not in block
    for path in ("/settings/security/provisioning/token", "/settings/security/provisioning/admin-group"):
        resp = client.post(path, data={"csrf_token": csrf(client, "/settings/security"), "group": ""})
        assert resp.status_code == 400 and b"single sign-on" in resp.data and b"secret-token" not in resp.data
    assert _org(app, northwind).scim_token_hash is None


def test_deactivating_sso_pauses_provisioning_and_turn_off_still_works(app, admin, active):
    token = _token_of(_generate(admin))
    submit(admin, admin.get("/settings/security"), "Deactivate SSO")
    assert not _valid(app, token)
    block = _block(admin.get("/settings/security"))
    assert "Paused" in block and "the token works again once" in block
    submit(admin, admin.get("/settings/security"), "Turn off")
    assert _org(app, active).scim_token_hash is None


# -- the counts and the admin group -----------------------------------------------------------------------------

def _scim_token(app, admin) -> str:
    """Turn provisioning on from the SECURITY tab; the token as the page shows it."""
    return _token_of(_generate(admin))


def test_counts_and_the_hint_about_linking(app, admin, active):
    token = _scim_token(app, admin)
    entra = app.test_client()
    scim_user(entra, token, "omar.haddad@northwind.example", "omar.haddad")  # Entra's default: mailNickname
    lena = scim_user(entra, token, LENA, "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")  # mapped from objectId
    scim_group(entra, token, "Sales team", [lena])
    block = _block(admin.get("/settings/security"))
    assert "<dt>Provisioned users</dt><dd>2</dd>" in block and "<dt>Provisioned groups</dt><dd>1</dd>" in block
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>2</dd>" in block
    assert "<code>externalId</code>'s source attribute to" in block and "<code>objectId</code>" in block
    last_call = re.search(r"<dt>Entra last called</dt><dd>([^<]+)</dd>", block).group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", last_call)
    sso_sign_in(app.test_client(), LENA)
    block = _block(admin.get("/settings/security"))
    assert "<dt>Not yet linked to a Microsoft sign-in</dt><dd>1</dd>" in block


def test_admin_group_select_saves_a_provisioned_group_and_none(app, admin, active):
    token = _scim_token(app, admin)
    entra = app.test_client()
    lena = scim_user(entra, token, LENA, "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")
    admins = scim_group(entra, token, "Portal Admins", [lena])
    sales = scim_group(entra, token, "Sales team")
    page = admin.get("/settings/security")
    [form] = [f for f in forms(page.data) if f["action"].endswith("/admin-group")]
    assert form["selects"]["group"] == ["", admins, sales] and form["fields"]["group"] == ""
    assert ">None</option>" in page.data.decode() and ">Portal Admins</option>" in page.data.decode()
    done = submit(admin, page, "Save admin group", fields={"group": admins}, follow_redirects=True)
    assert "Members of the group Portal Admins are admins now" in done.data.decode()
    with app.app_context():
        org = db.session.get(Organization, active)
        assert db.session.get(ScimGroup, org.scim_admin_group_id).scim_id == admins
        # Its current members at once.
        assert db.session.execute(db.select(User.role).where(User.scim_id == lena)).scalar_one() == "admin"
    assert re.search(rf'<option selected value="{admins}">|<option value="{admins}" selected>', done.data.decode())
    assert "scim_admin_group" in _actions(app)
    cleared = submit(admin, done, "Save admin group", fields={"group": ""}, follow_redirects=True)
    assert "No provisioned group decides who is admin" in cleared.data.decode()
    assert _org(app, active).scim_admin_group_id is None


@pytest.mark.parametrize("forged", ["unknown", "fabrikam", "1", "' OR 1=1 --", "x" * 5000])
def test_a_forged_admin_group_is_refused_and_nothing_changes(app, admin, active, forged):
    from domain import directory
    with app.app_context():
        fabrikam = directory.create_organization("Fabrikam Research", ["fabrikam.example"])
        fabrikam.tenant_id, fabrikam.sso_active = FABRIKAM_TID, True
        db.session.commit()
        fabrikam_id = fabrikam.id
    admins = scim_group(app.test_client(), _scim_token(app, admin), "Portal Admins")
    theirs = scim_group(app.test_client(), provisioning_token(app, fabrikam_id), "Materials lab")
    submit(admin, admin.get("/settings/security"), "Save admin group", fields={"group": admins})
    before, chosen = _actions(app), _org(app, active).scim_admin_group_id
    value = theirs if forged == "fabrikam" else forged
    resp = admin.post("/settings/security/provisioning/admin-group",
                      data={"csrf_token": csrf(admin, "/settings/security"), "group": value})
    assert resp.status_code == 400 and b"not one of the groups Microsoft Entra provisioned" in resp.data
    assert value.encode() not in resp.data or len(value) < 4  # not echoed back
    assert _org(app, active).scim_admin_group_id == chosen and _actions(app) == before
