"""The operator's commands on organisations and accounts: orgs, rename-org, add-domain, remove-domain, delete-org,
set-password; names unique without regard to case; password rules; every action audited as the operator."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from domain import directory, throttling
from helpers import NORTHWIND_TID, PASSWORD, database_bytes, password_sign_in, sso_sign_in
from models import AuditEvent, Domain, LoginSession, Organization, SignInHit, StoredProfile, User, db

NORTHWIND = "Northwind Traders"
ADMIN = "admin@northwind.example"
LENA = "lena.fischer@northwind.example"
NEW_PASSWORD = "velvet otter juggles lanterns"


def _snapshot(app):
    """Every row of every table, to show a refusal wrote nothing."""
    with app.app_context():
        return {t.name: sorted(map(repr, db.session.execute(db.select(t)).all())) for t in db.metadata.sorted_tables}


def _refused(result, *words):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for word in words:
        assert word in result.output, (word, result.output)


def _audit(runner, org=NORTHWIND):
    result = runner.invoke(args=["audit", "--org", org])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def _cli_admin(runner, email, org, password=PASSWORD):
    return runner.invoke(args=["create-admin", email, "--org", org, "--password-stdin"], input=password + "\n")


# -- orgs, names without regard to case -----------------------------------------------------------

def test_orgs_lists_every_organisation(runner, active):  # noqa: F811
    assert runner.invoke(args=["create-org", "Fabrikam Research", "--domain", "fabrikam.example",
                               "--domain", "fabrikam.test"]).exit_code == 0
    result = runner.invoke(args=["orgs"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Fabrikam Research\tfabrikam.example, fabrikam.test\t0 users\tSSO off",
        f"Northwind Traders\tnorthwind.example\t1 user\tSSO active (tenant {NORTHWIND_TID})",
    ]


def test_orgs_on_an_empty_portal_says_how_to_start(runner):
    result = runner.invoke(args=["orgs"])
    assert result.exit_code == 0 and "create-org NAME --domain DOMAIN" in result.output


def test_names_are_unique_without_regard_to_case(app, runner):
    assert runner.invoke(args=["create-org", "Acme", "--domain", "acme.example"]).exit_code == 0
    assert runner.invoke(args=["create-org", "Ärzte Nord", "--domain", "aerzte.example"]).exit_code == 0
    before = _snapshot(app)
    _refused(runner.invoke(args=["create-org", "acme", "--domain", "other.example"]), "'Acme' exists already")
    _refused(runner.invoke(args=["create-org", " ACME ", "--domain", "other.example"]), "'Acme' exists already")
    _refused(runner.invoke(args=["create-org", "ärzte nord", "--domain", "other.example"]), "exists already")
    _refused(runner.invoke(args=["rename-org", "Ärzte Nord", "aCmE"]), "'Acme' exists already")
    assert _snapshot(app) == before
    # --org finds the organisation whatever the case typed.
    assert _cli_admin(runner, "ada@acme.example", "ACME").exit_code == 0
    assert runner.invoke(args=["add-domain", "acme.test", "--org", "ärzte NORD"]).exit_code == 0
    # The database holds the rule too, for writes that bypass the domain.
    with app.app_context():
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.insert(Organization).values(name="ACME"))
            db.session.flush()
        db.session.rollback()


# -- rename-org, add-domain, remove-domain ------------------------------------------------------

def test_rename_org_shows_on_the_general_tab(app, client, runner, northwind):
    result = runner.invoke(args=["rename-org", "northwind traders", "Northwind Traders Ltd"])
    assert result.exit_code == 0, result.output
    assert result.output == "Renamed organisation Northwind Traders to Northwind Traders Ltd.\n"
    password_sign_in(client, ADMIN)
    page = client.get("/settings/general").data.decode()
    assert "<dd>Northwind Traders Ltd</dd>" in page
    # The tab points to the commands that change names and domains, not to create-org (which refuses).
    assert "rename-org" in page and "add-domain" in page and "remove-domain" in page and "create-org" not in page


def test_rename_org_refusals_write_nothing(app, runner, northwind):
    runner.invoke(args=["create-org", "Fabrikam Research", "--domain", "fabrikam.example"])
    before = _snapshot(app)
    _refused(runner.invoke(args=["rename-org", "Nobody", "Somebody"]), "No organisation is called 'Nobody'")
    _refused(runner.invoke(args=["rename-org", NORTHWIND, "FABRIKAM research"]), "exists already")
    _refused(runner.invoke(args=["rename-org", NORTHWIND, "   "]), "1 to 100 printable characters")
    _refused(runner.invoke(args=["rename-org", NORTHWIND, "x" * 101]), "1 to 100 printable characters")
    _refused(runner.invoke(args=["rename-org", NORTHWIND, "bad\x1bname"]), "1 to 100 printable characters")
    _refused(runner.invoke(args=["rename-org", NORTHWIND, NORTHWIND]), "is called 'Northwind Traders' already")
    assert _snapshot(app) == before


def test_add_domain_lets_its_emails_in(app, client, runner, northwind):
    result = runner.invoke(args=["add-domain", "Northwind.TEST.", "--org", NORTHWIND])
    assert result.exit_code == 0 and result.output == "Added northwind.test to Northwind Traders.\n"
    assert _cli_admin(runner, "ops@northwind.test", NORTHWIND).exit_code == 0
    assert password_sign_in(client, "ops@northwind.test").status_code == 303
    assert "<dd>northwind.example, northwind.test</dd>" in client.get("/settings/general").data.decode()


def test_add_domain_refusals_write_nothing(app, runner, northwind):
    runner.invoke(args=["create-org", "Fabrikam Research", "--domain", "fabrikam.example"])
    before = _snapshot(app)
    _refused(runner.invoke(args=["add-domain", "FABRIKAM.example", "--org", NORTHWIND]),
             "belongs to another organisation")
    _refused(runner.invoke(args=["add-domain", "northwind.example", "--org", NORTHWIND]), "already")
    _refused(runner.invoke(args=["add-domain", "not a domain", "--org", NORTHWIND]), "not a valid domain")
    _refused(runner.invoke(args=["add-domain", "nodot", "--org", NORTHWIND]), "at least one dot")
    _refused(runner.invoke(args=["add-domain", "x.example", "--org", "Nobody"]), "No organisation")
    assert _snapshot(app) == before


def test_remove_domain_keeps_password_accounts_and_never_the_last(app, client, runner, northwind):
    before = _snapshot(app)
    _refused(runner.invoke(args=["remove-domain", "northwind.example", "--org", NORTHWIND]),
             "only domain", "delete the organisation")
    _refused(runner.invoke(args=["remove-domain", "elsewhere.example", "--org", NORTHWIND]), "is not one of")
    _refused(runner.invoke(args=["remove-domain", "@@", "--org", NORTHWIND]), "is not one of")
    assert _snapshot(app) == before
    runner.invoke(args=["add-domain", "northwind.test", "--org", NORTHWIND])
    result = runner.invoke(args=["remove-domain", "NORTHWIND.example", "--org", NORTHWIND])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Removed northwind.example from Northwind Traders.",
        "1 of its accounts have an email in northwind.example: password accounts keep signing in with their "
        "password; Microsoft sign-ins from that domain no longer reach the organisation."]
    assert password_sign_in(client, ADMIN).status_code == 303  # the admin is not locked out
    assert "<dd>northwind.test</dd>" in client.get("/settings/general").data.decode()
    # The domain is free again for whoever owns it now.
    assert runner.invoke(args=["create-org", "Contoso", "--domain", "northwind.example"]).exit_code == 0


# -- delete-org ---------------------------------------------------------------------------------

def test_delete_org_needs_yes(app, runner, northwind):
    before = _snapshot(app)
    _refused(runner.invoke(args=["delete-org", NORTHWIND]), "deletes its 1 user", "--yes")
    _refused(runner.invoke(args=["delete-org", "Nobody", "--yes"]), "No organisation")
    assert _snapshot(app) == before


def test_delete_org_removes_its_users_and_everything_about_them(app, client, runner, active):  # noqa: F811
    assert runner.invoke(args=["create-org", "Fabrikam Research", "--domain", "fabrikam.example"]).exit_code == 0
    assert _cli_admin(runner, "admin@fabrikam.example", "Fabrikam Research").exit_code == 0
    assert sso_sign_in(client, LENA).status_code == 303  # a member: profile copy, photo, session
    password_sign_in(app.test_client(), ADMIN)  # a second session
    # Failed password checks leave throttle counts: the admin's to go, the other organisation's to keep.
    assert password_sign_in(app.test_client(), ADMIN, "not the password at all").status_code == 401
    assert password_sign_in(app.test_client(), "admin@fabrikam.example", "not the password at all").status_code == 401
    with app.app_context():
        org = directory.get_organization(NORTHWIND)
        users = db.session.execute(db.select(User).where(User.organization_id == org.id)).scalars().all()
        ids = [u.id for u in users]
        gone = [org.name.encode(), b"northwind.example", NORTHWIND_TID.encode()]
        gone += [u.email_enc for u in users] + [u.email_hmac for u in users]
        copies = db.session.execute(db.select(StoredProfile).where(StoredProfile.user_id.in_(ids))).scalars().all()
        assert copies and any(c.photo_enc for c in copies)
        gone += [c.data_enc for c in copies] + [c.photo_enc for c in copies if c.photo_enc]
        sessions = db.session.execute(db.select(LoginSession.id).where(LoginSession.user_id.in_(ids))).scalars().all()
        assert len(sessions) == 2
        gone += [s.encode() for s in sessions]
        keys = [throttling.account_key(e) for e in (ADMIN, LENA)]
        assert db.session.scalar(db.select(db.func.count()).select_from(SignInHit)
                                 .where(SignInHit.key.contains(keys[0]))) > 0
        gone += [k.encode() for k in keys]
        kept_key = throttling.account_key("admin@fabrikam.example")
        assert len(users) == 2 and db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)
                                                     .where(AuditEvent.organization_id == org.id)) > 3
    result = runner.invoke(args=["delete-org", "northwind TRADERS", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Deleted organisation Northwind Traders: 2 users, 2 profile copies, 2 sessions, ")
    assert result.output.endswith(" throttle counts, 1 domain.\n")
    with app.app_context():
        db.engine.dispose()  # everything on disk
    stored = database_bytes(app)
    for value in gone:
        assert value not in stored, value[:40]
    assert b"fabrikam.example" in stored and kept_key.encode() in stored  # the other organisation is untouched
    with app.app_context():
        assert [o.name for o in db.session.execute(db.select(Organization)).scalars()] == ["Fabrikam Research"]
        assert {u.organization_id for u in db.session.execute(db.select(User)).scalars()} == {
            directory.get_organization("Fabrikam Research").id}
        deleted = db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "org_deleted")).scalar_one()
        assert deleted.organization_id is None and deleted.by_operator
        assert "user=2 profile_copy=2 session=2" in deleted.detail
    assert client.get("/profile/").status_code == 302  # Lena's session ended with her account
    assert _audit(runner, "Fabrikam Research")  # the other organisation keeps its log
    _refused(runner.invoke(args=["audit", "--org", NORTHWIND]), "No organisation")


# -- set-password and the password rules ----------------------------------------------------------

def test_set_password_replaces_it_and_ends_the_sessions(app, client, runner, northwind):
    assert password_sign_in(client, ADMIN).status_code == 303
    other = app.test_client()
    password_sign_in(other, ADMIN)
    result = runner.invoke(args=["set-password", "Admin@Northwind.example", "--password-stdin"],
                           input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert result.output == "New password set for admin@northwind.example; 2 sessions ended.\n"
    assert NEW_PASSWORD not in result.output
    for browser in (client, other):
        assert browser.get("/settings/general").status_code == 302  # signed out
    assert password_sign_in(client, ADMIN).status_code == 401
    assert password_sign_in(client, ADMIN, NEW_PASSWORD).status_code == 303


def test_set_password_prompts_twice(runner, northwind):
    result = runner.invoke(args=["set-password", ADMIN], input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert result.exit_code == 0 and NEW_PASSWORD not in result.output


def test_set_password_refusals_change_nothing(app, client, runner, active):  # noqa: F811
    sso_sign_in(client, LENA)  # an account that exists through Microsoft only
    before = _snapshot(app)
    cases = [(["set-password", "nobody@northwind.example"], NEW_PASSWORD, "No account has the email"),
             (["set-password", LENA], NEW_PASSWORD, "signs in with Microsoft only"),
             (["set-password", "not an email"], NEW_PASSWORD, "Enter an email address"),
             (["set-password", ADMIN], "password123456", "too easy to guess"),
             (["set-password", ADMIN], "short", "at least 12 characters")]
    for args, password, words in cases:
        _refused(runner.invoke(args=args + ["--password-stdin"], input=password + "\n"), words)
    assert _snapshot(app) == before
    assert client.get("/profile/").status_code == 200  # Lena is still signed in


@pytest.mark.parametrize(("password", "why"), [
    ("aaaaaaaaaaaaaaaaaaaaaaaaa", "one character repeated"),
    ("sY8#" * 257, "at most 1024 characters"),
    ("password123456", "too easy to guess. This is similar to a commonly used password."),
    ("qwertyuiop123", "too easy to guess. This is a very common password."),
    ("iloveyou2024!", "too easy to guess"),
    ("abcdefghijklmnop", "too easy to guess. Sequences like"),
    ("ada.lovelace@tailspin.example", "contains the email address"),
    ("Ada.Lovelace@Tailspin.Example!", "contains the email address"),
    ("my name is ADA.LOVELACE", "contains the email address"),
])
def test_common_and_guessable_passwords_are_refused_with_the_reason(app, runner, password, why):
    runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"])
    before = _snapshot(app)
    _refused(_cli_admin(runner, "ada.lovelace@tailspin.example", "Tailspin", password), why)
    assert _snapshot(app) == before


def test_long_unusual_passwords_are_accepted(runner):
    runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"])
    for n, password in enumerate([NEW_PASSWORD, "Tr0ub4dor&3-and-more", "x" + "sY8#" * 40]):
        result = _cli_admin(runner, f"admin{n}@tailspin.example", "Tailspin", password)
        assert result.exit_code == 0, (password, result.output)


# -- the audit log --------------------------------------------------------------------------------

def test_every_cli_action_is_audited_as_the_operator(app, client, runner, active):  # noqa: F811
    steps = [["create-admin", "ops@northwind.example", "--org", NORTHWIND, "--password-stdin", "--break-glass"],
             ["add-domain", "northwind.test", "--org", NORTHWIND],
             ["remove-domain", "northwind.test", "--org", NORTHWIND],
             ["rename-org", NORTHWIND, "Northwind Traders Ltd"],
             ["set-password", "ops@northwind.example", "--password-stdin"],
             ["deactivate-sso", "--org", "Northwind Traders Ltd"],
             ["create-org", "Contoso", "--domain", "contoso.example"]]
    for args in steps:
        result = runner.invoke(args=args, input=PASSWORD + "\n")
        assert result.exit_code == 0, (args, result.output)
    lines = _audit(runner, "Northwind Traders Ltd")
    by_cli = [(x["action"], x["detail"]) for x in lines if x["actor"] == "operator (CLI)"]
    with app.app_context():
        ops = directory.users_by_email("ops@northwind.example")[0].id
    assert by_cli == [("user_created", f"user {ops} admin break-glass password"),
                      ("domain_added", "northwind.test"), ("domain_removed", "northwind.test accounts=0"),
                      ("org_renamed", "Northwind Traders -> Northwind Traders Ltd"),
                      ("password_reset", f"user {ops} sessions_ended=0"), ("sso_deactivate", "cli")]
    assert all(x["ip"] is None for x in lines if x["actor"] == "operator (CLI)")
    assert [(x["action"], x["actor"]) for x in _audit(runner, "contoso")] == [("org_created", "operator (CLI)")]
    # Admins see the operator's actions on the AUDIT LOG tab, by name.
    password_sign_in(client, ADMIN)
    page = client.get("/settings/audit").data.decode()
    for label in ("User created", "Domain added", "Domain removed", "Organisation renamed", "Password reset",
                  "SSO deactivated"):
        assert f'<td data-label="Action">{label}</td>' in page, label
    assert page.count('<td data-label="Actor">operator (CLI)</td>') == 6


def test_refused_cli_actions_are_not_audited(app, runner, northwind):
    with app.app_context():
        events = db.session.scalar(db.select(db.func.count()).select_from(AuditEvent))
    _refused(_cli_admin(runner, "bob@northwind.example", NORTHWIND, "password123456"))
    _refused(runner.invoke(args=["add-domain", "nodot", "--org", NORTHWIND]))
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)) == events
        assert db.session.scalar(db.select(db.func.count()).select_from(Domain)) == 1
