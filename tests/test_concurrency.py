"""Many browsers at once: parallel first sign-ins, activations and profile writes (SQLite and PostgreSQL)."""
from __future__ import annotations

import pytest

from domain import profiles
from helpers import NORTHWIND_TID, all_at_once, password_sign_in, start_sso, submit, through_microsoft
from models import AuditEvent, Organization, StoredProfile, User, db

PARALLEL = 50
LENA = ("lena.fischer@northwind.example", "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")
OMAR = ("omar.haddad@northwind.example", "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03")


@pytest.fixture(autouse=True)
def no_throttle(app):
    """Fifty sign-ins of one account from one address are the point here, not an attack."""
    app.config.update(RATELIMIT_SIGN_IN_PER_IP="100000 per minute", RATELIMIT_SIGN_IN_PER_ACCOUNT="100000 per minute")


def _returns_from_microsoft(app, email: str, n: int):
    """n browsers that each started a sign-in as `email` and hold Microsoft's redirect back, not yet followed."""
    pending = []
    for _ in range(n):
        browser = app.test_client()
        back = through_microsoft(browser, start_sso(browser, email), user=email, follow_back=False)
        assert back.status_code in (302, 303) and "/auth/callback?" in back.headers["Location"]
        pending.append((browser, back.headers["Location"]))
    return pending


def _callbacks(pending):
    return all_at_once([lambda b=browser, url=url: b.get(url) for browser, url in pending])


def _count(model, *where) -> int:
    return db.session.scalar(db.select(db.func.count()).select_from(model).where(*where))


def test_parallel_first_sign_ins_of_one_new_user_all_end_signed_in_with_one_row(app, active):
    pending = _returns_from_microsoft(app, LENA[0], PARALLEL)
    answers = _callbacks(pending)
    assert [r.status_code for r in answers] == [303] * PARALLEL, {r.status_code for r in answers}
    assert all(browser.get("/profile/").status_code == 200 for browser, _ in pending)
    with app.app_context():
        assert _count(User, User.tenant_id == NORTHWIND_TID, User.object_id == LENA[1]) == 1
        lena = db.session.execute(db.select(User).where(User.object_id == LENA[1])).scalar_one()
        assert _count(StoredProfile, StoredProfile.user_id == lena.id) == 1
        assert profiles.profile_of(lena).claims["displayName"] == "Lena Fischer"
        assert _count(AuditEvent, AuditEvent.action == "user_created") == 1
        assert _count(AuditEvent, AuditEvent.action == "sign_in", AuditEvent.outcome == "success",
                      AuditEvent.actor_id == lena.id) == PARALLEL


def test_parallel_activations_bind_the_tenant_once(app, northwind):
    admin = app.test_client()
    password_sign_in(admin, "admin@northwind.example")
    cookie = admin.get_cookie(app.config["SESSION_COOKIE_NAME"], domain="portal.test")
    pending = []
    for _ in range(PARALLEL):  # the admin's signed-in cookie in many browsers, each activating
        browser = app.test_client()
        browser.set_cookie(cookie.key, cookie.value, domain=cookie.domain, path=cookie.path)
        consent = submit(browser, browser.get("/settings/security"), "Activate SSO")
        go = submit(browser, consent, "Continue to Microsoft")
        back = through_microsoft(browser, go, user="admin@northwind.example", follow_back=False)
        pending.append((browser, back.headers["Location"]))
    answers = _callbacks(pending)
    assert [r.status_code for r in answers] == [303] * PARALLEL, {r.status_code for r in answers}
    assert all(r.headers["Location"].endswith("/settings/security") for r in answers)
    with app.app_context():
        org = db.session.get(Organization, northwind)
        assert (org.tenant_id, org.sso_active) == (NORTHWIND_TID, True)
        assert _count(AuditEvent, AuditEvent.action == "tenant_bound") == 1
        assert _count(AuditEvent, AuditEvent.action == "sso_activate", AuditEvent.outcome == "success") == PARALLEL
        assert _count(User, User.tenant_id == NORTHWIND_TID) == 1  # the admin, linked once


def test_parallel_sign_ins_lose_no_profile_write(app, emulator, active):
    first = _returns_from_microsoft(app, LENA[0], 1)
    assert _callbacks(first)[0].status_code == 303  # Lena has a stored copy already; Omar has none
    half = PARALLEL // 2
    pending = _returns_from_microsoft(app, LENA[0], half) + _returns_from_microsoft(app, OMAR[0], PARALLEL - half)
    emulator.directory.user_by_upn(LENA[0]).profile["jobTitle"] = "Head of Sales"  # read at the callback
    answers = _callbacks(pending)
    assert [r.status_code for r in answers] == [303] * PARALLEL, {r.status_code for r in answers}
    with app.app_context():
        lena, omar = (db.session.execute(db.select(User).where(User.object_id == oid)).scalar_one()
                      for _, oid in (LENA, OMAR))
        assert profiles.profile_of(lena).claims["jobTitle"] == "Head of Sales"
        assert profiles.profile_of(omar).claims["jobTitle"] == "Logistics Coordinator"
        assert _count(StoredProfile) == 3  # admin, Lena, Omar: one row each
        assert _count(AuditEvent, AuditEvent.action == "sign_in", AuditEvent.outcome == "failure") == 0
