"""Issue 13: who an SSO sign-in links to, which email is trusted, key issuers, page numbers, the emulator's
body limit. Each case runs through the real routes with the emulator made to misbehave."""
from __future__ import annotations

import io

import pytest

import entra
from domain import directory, profiles
from helpers import (NORTHWIND_TID, PASSWORD, activate_sso, password_sign_in, sign_in_state, sign_out, signed_in,
                     sso_sign_in, submit)
from models import AuditEvent, Organization, User, db

ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"
CEO = "ceo@northwind.example"


def _user(app, oid: str | None = None, email: str | None = None) -> User | None:
    with app.app_context():
        if email is not None:
            found = directory.users_by_email(email)
            return found[0] if found else None
        return db.session.execute(db.select(User).where(User.object_id == oid)).scalar_one_or_none()


# -- finding 2: activation links only the admin's own Microsoft account ---------------------------------

def test_activation_by_a_colleagues_microsoft_account_binds_the_tenant_but_links_nobody(app, client, northwind):
    resp = activate_sso(client, microsoft_user=LENA)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/settings/security")
    page = client.get("/settings/security")
    assert b"Active" in page.data and NORTHWIND_TID.encode() in page.data
    assert b"was not linked" in page.data and LENA.encode() in page.data
    with app.app_context():
        org = db.session.get(Organization, northwind)
        assert org.tenant_id == NORTHWIND_TID and org.sso_active
        admin = directory.users_by_email(ADMIN)[0]
        assert (admin.tenant_id, admin.object_id) == (None, None)
        assert profiles.profile_of(admin) is None  # Lena's profile is not kept as the admin's
    sign_out(client)
    # Lena's Microsoft sign-in is Lena, a member: not the portal's admin.
    assert sso_sign_in(client, LENA).status_code == 303
    assert client.get("/settings/security").status_code == 403
    assert LENA.encode() in client.get("/profile/").data
    sign_out(client)
    # The admin links their own account by signing in with it.
    assert sso_sign_in(client, ADMIN).status_code == 303
    assert client.get("/settings/security").status_code == 200
    assert _user(app, email=ADMIN).object_id == "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01"


def test_activation_with_the_admins_own_microsoft_account_links_it(app, client, northwind):
    activate_sso(client)
    assert b"was not linked" not in client.get("/settings/security").data
    admin = _user(app, email=ADMIN)
    assert (admin.tenant_id, admin.object_id) == (NORTHWIND_TID, "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01")


# -- finding 4: Graph's unverified mail is profile data, never the stored or indexed email ----------------

def test_graph_mail_of_a_member_does_not_make_them_the_ceo(app, client, runner, emulator, active):  # noqa: F811
    emulator.faults["graph_me"] = {"mail": CEO}
    assert sso_sign_in(client, LENA).status_code == 303
    profile = client.get("/profile/").data.decode()
    assert f"<dt>Email</dt><dd>{LENA}</dd>" in profile  # the verified one is the email
    assert CEO in profile  # shown, as directory data
    sign_out(client)
    lena = _user(app, oid=LENA_OID)
    assert lena is not None and _user(app, email=CEO) is None  # no CEO lookup hash
    password_sign_in(client, ADMIN)
    audit = client.get("/settings/audit").data.decode()
    assert CEO not in audit and LENA in audit
    result = runner.invoke(args=["create-admin", CEO, "--org", "Northwind Traders", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    ceo = _user(app, email=CEO)
    assert ceo.password_hash and ceo.email_hmac != _user(app, oid=LENA_OID).email_hmac


def test_a_member_whose_upn_is_outside_the_domains_keeps_no_email(app, client, emulator, active):  # noqa: F811
    # No verified email in Northwind's domains: nothing stored or indexed, the name comes from nowhere else.
    emulator.faults["id_token_claims"] = {"preferred_username": "lena@northwind.onmicrosoft.example", "email": None}
    emulator.faults["graph_me"] = {"mail": CEO, "userPrincipalName": CEO}
    assert sso_sign_in(client, LENA).status_code == 303
    with app.app_context():
        lena = db.session.execute(db.select(User).where(User.object_id == LENA_OID)).scalar_one()
        assert lena.email_hmac == b"" and lena.email_enc == b""
        assert directory.display_user(lena) != CEO


def test_without_stored_copies_the_graph_mail_does_not_name_the_member_either(app, client, emulator,
                                                                             active):  # noqa: F811
    password_sign_in(client, ADMIN)
    assert submit(client, client.get("/settings/security"), "Save", checks={"store_profiles": False}).status_code == 303
    sign_out(client)
    emulator.faults["graph_me"] = {"mail": CEO}
    member = app.test_client()
    assert sso_sign_in(member, LENA).status_code == 303  # her copy lives as long as her session
    password_sign_in(client, ADMIN)
    audit = client.get("/settings/audit").data.decode()
    assert CEO not in audit and LENA in audit
    assert f"<dt>Email</dt><dd>{LENA}</dd>" in member.get("/profile/").data.decode()


# -- finding 5: each published key's issuer must match the token's ------------------------------------

def test_a_token_signed_with_a_consumer_key_is_refused(app, client, emulator, active):  # noqa: F811
    jwks = emulator.wsgi.test_client().get("/organizations/discovery/v2.0/keys").get_json()
    assert all(k["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0" for k in jwks["keys"])
    before = sign_in_state(app)
    emulator.faults["id_token_alg"] = "consumer-key"
    consumer = emulator.wsgi.test_client().get("/organizations/discovery/v2.0/keys").get_json()["keys"]
    assert consumer[-1]["issuer"] == f"https://login.microsoftonline.com/{entra.PERSONAL_TENANT}/v2.0"
    resp = sso_sign_in(client, LENA)
    assert resp.status_code == 401 and b"could not be verified" in resp.data
    assert sign_in_state(app) == before and not signed_in(client)
    with app.app_context():
        last = db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id.desc())).scalars().first()
        assert (last.outcome, last.detail) == ("failure", "id_token_bad_key_issuer")


# -- finding 6: page numbers are ASCII digits ---------------------------------------------------------

@pytest.mark.parametrize("page", ["²", "①", "٣", "１", "+1", " 1", "1_0", "-1", "0", "9" * 40, "1e3", ""])
def test_audit_page_numbers_other_than_ascii_digits_are_missing_pages(client, northwind, page):
    password_sign_in(client, ADMIN)
    resp = client.get("/settings/audit", query_string={"page": page})
    assert resp.status_code == 404 and b"No such page" in resp.data


def test_audit_page_one_is_found(client, northwind):
    password_sign_in(client, ADMIN)
    assert client.get("/settings/audit?page=1").status_code == 200


# -- finding 7: the emulator refuses a big body before reading it ---------------------------------------

class _Counting(io.RawIOBase):
    """A body of `size` bytes made up as it is read, counting what the server reads."""

    def __init__(self, size: int):
        self.size, self.pos, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        buffer[:n] = b"a" * n
        self.pos += n
        self.read_bytes += n
        return n


@pytest.mark.parametrize("path", ["/_entra/organizations/oauth2/v2.0/authorize",
                                  "/_entra/organizations/oauth2/v2.0/token"])
def test_the_emulator_refuses_a_50_mib_body_unread(app, client, path):
    size = 50 * 1024 * 1024
    body = _Counting(size)
    resp = client.post(path, input_stream=body, content_length=size,
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 413
    assert body.read_bytes <= app.config["MAX_CONTENT_LENGTH"]
