"""Personal data protection: the store-profiles setting, export, deletion, purge, sweep, photo, plaintext at rest."""
from __future__ import annotations

import base64
import json
import logging
import zlib
from datetime import timedelta

import pytest
from itsdangerous import base64_decode

import vault
from domain import directory, sealed
from helpers import csrf, database_bytes, follow_link, forms, password_sign_in, sign_out, sso_sign_in, submit
from models import AuditEvent, LoginSession, Organization, StoredProfile, User, db, utcnow

LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"
# Everything personal the emulator tells the portal about Lena and Nadia (the admin who activated SSO).
PERSONAL = ["Lena", "Fischer", "lena.fischer", "Sales Manager", "+1 555 0102", "+1 555 0112", "HQ 3.01",
            "Nadia", "Okafor", "IT Administrator", "+1 555 0101", "HQ 2.14",
            "12 Harbour Road", "Seattle", "98101"]


def _count(model, *where) -> int:
    return db.session.scalar(db.select(db.func.count()).select_from(model).where(*where))


def _lena(app) -> User:
    return db.session.execute(db.select(User).where(User.object_id == LENA_OID)).scalar_one()


def _events(action: str) -> list[AuditEvent]:
    return list(db.session.execute(db.select(AuditEvent).where(AuditEvent.action == action)).scalars())


def _store_box(page) -> bool:
    """Whether the SECURITY tab shows the store-profiles box ticked."""
    [checked] = [f["checkboxes"]["store_profiles"][1] for f in forms(page.data) if "store_profiles" in f["checkboxes"]]
    return checked


def _set_store(client, on: bool):
    """The admin's browser: SECURITY tab → Stored profiles → tick or untick → Save."""
    password_sign_in(client, "admin@northwind.example")
    resp = submit(client, client.get("/settings/security"), "Save", checks={"store_profiles": on})
    sign_out(client)
    return resp


@pytest.fixture
def no_copies(app, client, active):  # noqa: F811
    """Northwind with SSO active and "Store an encrypted copy of user profiles" turned off."""
    assert _set_store(client, False).status_code == 303
    return active


# -- the setting --------------------------------------------------------------------------------

def test_setting_is_on_by_default_and_shown_to_admins(app, client, northwind):
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/security")
    assert b"Store an encrypted copy of user profiles" in page.data
    assert _store_box(page) is True
    assert b'<a class="button" href="/settings/security/profiles/purge">Delete all stored copies</a>' in page.data


def test_turning_the_setting_off_deletes_stored_copies_and_is_audited(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    sign_out(client)
    with app.app_context():
        assert _count(StoredProfile) == 2  # the activating admin and Lena
        assert _lena(app).email_enc
    _set_store(client, False)
    with app.app_context():
        assert _count(StoredProfile) == 0
        lena = _lena(app)
        assert (lena.email_enc, lena.email_hmac) == (b"", b"")  # her email came from Microsoft
        assert directory.users_by_email("admin@northwind.example")  # a password account keeps its sign-in name
        assert not db.session.get(Organization, active).store_profiles
        [event] = _events("store_profiles")
        assert event.detail == "off; deleted 2" and event.actor.role == "admin"
    password_sign_in(client, "admin@northwind.example")
    assert _store_box(client.get("/settings/security")) is False


def test_with_the_setting_off_the_profile_lives_only_as_long_as_the_session(app, client, no_copies):
    sso_sign_in(client, LENA)
    page = client.get("/profile/")
    assert b"Lena Fischer" in page.data and b"Sales Manager" in page.data and LENA.encode() in page.data
    assert b"deleted when you sign out" in page.data
    assert client.get("/profile/photo").status_code == 200
    assert LENA.encode() in client.get("/").data  # shown from the session's copy
    with app.app_context():
        lena = _lena(app)
        assert (lena.email_enc, lena.email_hmac) == (b"", b"")
        row = db.session.get(StoredProfile, lena.id)
        assert row is not None and not row.kept and row.session_id
    sign_out(client)
    with app.app_context():
        lena = _lena(app)
        assert _count(StoredProfile, StoredProfile.user_id == lena.id) == 0
        # What outlives the session: identity, role and times.
        assert (lena.tenant_id, lena.object_id, lena.role) != (None, None, None)
        assert (lena.email_enc, lena.email_hmac, lena.password_hash) == (b"", b"", None)


def test_turning_the_setting_on_again_stores_the_next_sign_in(app, client, no_copies):
    _set_store(client, True)
    sso_sign_in(client, LENA)
    sign_out(client)
    with app.app_context():
        lena = _lena(app)
        assert db.session.get(StoredProfile, lena.id).kept
        assert directory.user_email(lena) == LENA and directory.users_by_email(LENA) == [lena]
        assert [e.detail for e in _events("store_profiles")] == ["off; deleted 1", "on; deleted 0"]


def test_members_cannot_change_the_setting_or_purge(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    token = csrf(client, "/profile/")
    assert client.post("/settings/security/profiles", data={"csrf_token": token}).status_code == 403
    assert client.post("/settings/security/profiles/purge", data={"csrf_token": token}).status_code == 403
    with app.app_context():
        assert db.session.get(Organization, active).store_profiles and _count(StoredProfile) == 2


def test_setting_without_csrf_token_is_refused_and_changes_nothing(app, client, active):  # noqa: F811
    password_sign_in(client, "admin@northwind.example")
    resp = client.post("/settings/security/profiles", data={})
    assert resp.status_code == 400 and b"Form expired" in resp.data
    with app.app_context():
        assert db.session.get(Organization, active).store_profiles and _count(StoredProfile) == 1


# -- sessions that are never used again ---------------------------------------------------------

def _age_sessions(app, user_id: int, minutes: int) -> None:
    with app.app_context():
        old = utcnow() - timedelta(minutes=minutes)
        db.session.execute(db.update(LoginSession).where(LoginSession.user_id == user_id)
                           .values(last_seen_at=old))
        db.session.commit()


def test_next_sign_in_sweeps_expired_sessions_and_their_copies(app, client, no_copies):
    app.config["SESSION_SWEEP_SECONDS"] = 0  # sweep at every sign-in (by default a worker's first in a minute)
    sso_sign_in(client, LENA)  # and she never comes back
    with app.app_context():
        lena_id = _lena(app).id
    _age_sessions(app, lena_id, 31)
    other = app.test_client()
    password_sign_in(other, "admin@northwind.example")
    with app.app_context():
        assert _count(StoredProfile, StoredProfile.user_id == lena_id) == 0
        assert _count(LoginSession, LoginSession.user_id == lena_id) == 0
    assert client.get("/profile/").status_code == 302  # her old cookie signs nobody in


def test_sweep_sessions_command(app, client, runner, no_copies):
    sso_sign_in(client, LENA)
    with app.app_context():
        lena_id = _lena(app).id
    result = runner.invoke(args=["sweep-sessions"])
    assert result.exit_code == 0 and "Deleted 0 expired sessions and 0 session-only profile copies" in result.output
    _age_sessions(app, lena_id, 31)
    result = runner.invoke(args=["sweep-sessions"])
    assert result.exit_code == 0 and "Deleted 1 expired sessions and 1 session-only profile copies" in result.output
    with app.app_context():
        assert _count(StoredProfile) == 0


def test_sweep_keeps_copies_the_organisation_stores(app, client, runner, active):  # noqa: F811
    sso_sign_in(client, LENA)
    with app.app_context():
        lena_id = _lena(app).id
    _age_sessions(app, lena_id, 31)
    assert runner.invoke(args=["sweep-sessions"]).exit_code == 0
    with app.app_context():
        assert _count(StoredProfile, StoredProfile.user_id == lena_id) == 1
        assert _count(LoginSession, LoginSession.user_id == lena_id) == 0


# -- download my data ---------------------------------------------------------------------------

def test_download_my_data_is_a_json_attachment_of_everything_stored(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    resp = submit(client, client.get("/profile/"), "Download my data")
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="my-portal-data.json"'
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and "no-store" in resp.headers["Cache-Control"]
    data = json.loads(resp.data)
    assert data["account"]["email"] == LENA and data["account"]["object_id"] == LENA_OID
    assert data["account"]["has_password"] is False and data["account"]["organisation"] == "Northwind Traders"
    profile = data["stored_profile"]
    assert profile["kept_after_sign_out"] is True
    assert profile["claims"]["displayName"] == "Lena Fischer" and profile["claims"]["city"] == "Seattle"
    assert "mailNickname" not in profile["claims"]  # read at sign-in only to match a provisioned user, not kept
    photo = base64.b64decode(profile["photo"]["base64"])
    assert profile["photo"]["content_type"] == "image/png" and photo == client.get("/profile/photo").data
    assert [s["method"] for s in data["sessions"]] == ["sso"]
    assert {"sign_in", "user_created", "data_export"} <= {e["action"] for e in data["audit_events"]}
    assert "password_hash" not in resp.data.decode() and "sid" not in data["sessions"][0]


def test_download_for_a_password_account_without_a_microsoft_copy(client, northwind):
    password_sign_in(client, "admin@northwind.example")
    data = json.loads(submit(client, client.get("/profile/"), "Download my data").data)
    assert data["account"]["email"] == "admin@northwind.example" and data["stored_profile"] is None


def test_download_needs_a_signed_in_user_and_a_post_with_csrf(client, northwind):
    assert client.post("/profile/export").status_code == 400  # no CSRF token
    assert client.get("/profile/export").status_code == 405
    password_sign_in(client, "admin@northwind.example")
    assert client.post("/profile/export", data={}).status_code == 400
    sign_out(client)
    resp = client.post("/profile/export", data={"csrf_token": csrf(client)})
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


# -- delete my stored copy ----------------------------------------------------------------------

def test_delete_my_stored_copy_asks_first_then_deletes(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    confirm = follow_link(client, client.get("/profile/"), "Delete my stored copy")
    assert confirm.status_code == 200 and b"Delete your stored copy?" in confirm.data
    with app.app_context():
        assert _count(StoredProfile, StoredProfile.user_id == _lena(app).id) == 1  # asking deleted nothing
    done = submit(client, confirm, "Delete my stored copy")
    assert done.status_code == 303
    page = client.get("/profile/")
    assert page.status_code == 200 and b"No Microsoft profile is stored for you, nor your email" in page.data
    assert b"Lena Fischer" not in page.data and b"<dt>Email</dt>" not in page.data  # no "Email —"
    assert b"Delete my stored copy" not in page.data  # nothing left to delete
    assert client.get("/profile/photo").status_code == 404
    with app.app_context():
        lena = _lena(app)
        assert _count(StoredProfile, StoredProfile.user_id == lena.id) == 0
        assert (lena.email_enc, lena.email_hmac) == (b"", b"")
        assert _count(StoredProfile) == 1  # the admin's copy is not hers to delete
        [event] = _events("profile_deleted")
        assert event.actor_id == lena.id


def test_delete_is_a_post_with_csrf(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    assert client.post("/profile/delete", data={}).status_code == 400
    with app.app_context():
        assert _count(StoredProfile) == 2


def test_deleted_copy_leaves_no_ciphertext_in_the_database_file(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    with app.app_context():
        blob = db.session.get(StoredProfile, _lena(app).id).data_enc
    submit(client, follow_link(client, client.get("/profile/"), "Delete my stored copy"), "Delete my stored copy")
    assert blob[-32:] not in database_bytes(app)  # overwritten, not left in a free page


# -- the admin's purge --------------------------------------------------------------------------

def test_admin_purges_the_organisations_copies(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    sign_out(client)
    password_sign_in(client, "admin@northwind.example")
    confirm = follow_link(client, client.get("/settings/security"), "Delete all stored copies")
    assert confirm.status_code == 200 and b"Delete all stored copies?" in confirm.data
    with app.app_context():
        assert _count(StoredProfile) == 2
    assert submit(client, confirm, "Delete all stored copies").status_code == 303
    with app.app_context():
        assert _count(StoredProfile) == 0
        assert db.session.get(Organization, active).store_profiles  # the setting itself is unchanged
        [event] = _events("profiles_purged")
        assert event.detail == "deleted 2"


# -- the photo ----------------------------------------------------------------------------------

def _replace_photo(app, data: bytes) -> None:
    with app.app_context():
        lena = _lena(app)
        row = db.session.get(StoredProfile, lena.id)
        row.photo_enc = vault.get_vault().encrypt(data, sealed.bound_to("photo", lena))
        db.session.commit()


def test_the_photo_url_serves_only_the_signed_in_users_own_photo(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    assert client.get("/profile/photo").status_code == 200
    omar = app.test_client()
    sso_sign_in(omar, "omar.haddad@northwind.example")  # has no photo
    assert omar.get("/profile/photo").status_code == 404
    assert omar.get("/profile/photo?user=" + LENA_OID).status_code == 404
    assert app.test_client().get("/profile/photo").status_code == 302  # signed out: to the login page


@pytest.mark.parametrize("data", [b"<html><script>alert(1)</script></html>",
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * (600 * 1024)],
                         ids=["not an image", "too big"])
def test_a_stored_photo_that_is_not_a_small_jpeg_or_png_is_not_served(app, client, active, data):  # noqa: F811
    sso_sign_in(client, LENA)
    _replace_photo(app, data)
    resp = client.get("/profile/photo")
    assert resp.status_code == 404 and b"<script>" not in resp.data


# -- tampering and swapped blobs ----------------------------------------------------------------

def _admin(app) -> User:
    return directory.users_by_email("admin@northwind.example")[0]


def test_tampered_profile_is_a_clear_error_and_the_row_is_kept(app, client, active, caplog):  # noqa: F811
    sso_sign_in(client, LENA)
    with app.app_context():
        row = db.session.get(StoredProfile, _lena(app).id)
        tampered = row.data_enc[:-1] + bytes([row.data_enc[-1] ^ 1])
        row.data_enc = tampered
        db.session.commit()
    resp = client.get("/profile/")
    assert resp.status_code == 500 and b"Stored data cannot be read" in resp.data and b"Error 500" in resp.data
    assert b"Lena" not in resp.data
    assert "cannot be decrypted" in caplog.text
    with app.app_context():
        assert db.session.get(StoredProfile, _lena(app).id).data_enc == tampered  # kept for the operator
    # The way out still works, because asking and deleting decrypt nothing.
    confirm = client.get("/profile/delete")
    assert submit(client, confirm, "Delete my stored copy").status_code == 303
    assert client.get("/profile/").status_code == 200


def test_a_profile_copied_into_another_users_row_does_not_decrypt(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    sign_out(client)
    with app.app_context():
        lena_row = db.session.get(StoredProfile, _lena(app).id)
        admin_row = db.session.get(StoredProfile, _admin(app).id)
        admin_row.data_enc = lena_row.data_enc
        db.session.commit()
    password_sign_in(client, "admin@northwind.example")
    resp = client.get("/profile/")
    assert resp.status_code == 500 and b"Lena" not in resp.data


def test_a_blob_moved_to_another_field_does_not_decrypt(app, client, active):  # noqa: F811
    sso_sign_in(client, LENA)
    with app.app_context():
        row = db.session.get(StoredProfile, _lena(app).id)
        row.photo_enc = row.data_enc  # the profile JSON served as the "photo"
        db.session.commit()
    resp = client.get("/profile/photo")
    assert resp.status_code == 500 and b"Lena" not in resp.data


# -- nothing personal in clear at rest ----------------------------------------------------------

def _cookie_payload(client) -> bytes:
    value = client.get_cookie("session", domain="portal.test").value
    compressed = value.startswith(".")
    payload = base64_decode(value.lstrip(".").split(".")[0])
    return zlib.decompress(payload) if compressed else payload


@pytest.mark.parametrize("store", [True, False], ids=["copies kept", "no copies"])
def test_no_plaintext_personal_data_in_the_database_logs_or_cookie(app, client, active, caplog, store):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    if not store:
        _set_store(client, False)
    sso_sign_in(client, LENA)
    assert b"Lena Fischer" in client.get("/profile/").data  # the data is really there, only encrypted
    cookie = _cookie_payload(client)
    with app.app_context():
        db.engine.dispose()  # close pooled connections so everything is on disk
    stored = database_bytes(app)
    with app.app_context():
        assert db.session.get(StoredProfile, _lena(app).id).data_enc in stored  # the search reads what is stored
    for text in PERSONAL:
        assert text.encode() not in stored, text
        assert text not in caplog.text, text
        assert text.encode() not in cookie, text
    sign_out(client)
    assert "Lena" not in caplog.text and b"Lena" not in database_bytes(app)
