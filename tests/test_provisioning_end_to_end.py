"""User provisioning end to end: the emulator, as Entra's provisioning service, runs cycles against the portal's
real /scim/v2/ endpoint in-process, and people see what follows on the USERS tab, in their sessions and at sign-in.

The journey runs twice: in demo mode (demo.py mounts the portal on the emulator's provisioning session) and in the
production configuration (Microsoft's hosts answered by the emulator without demo mode, the Tenant URL over https,
the Chromium-like browser of tests/browsing.py). Then the failures Entra meets: a wrong token, a database that stops
during a cycle.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

import demo
from browsing import PortalBrowser
from emulator.transport import WSGIAdapter
from helpers import (NORTHWIND_TID as NW, PASSWORD, PORTAL_HOST, csrf, dump_database, password_sign_in, signed_in,
                     sso_sign_in, submit)
from models import AuditEvent, ScimGroup, ScimGroupMember, User, db

ADMIN = "admin@northwind.example"
LENA, OMAR, JUN = ("1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02", "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03",
                   "3d9a4f85-af4b-4a3e-8d8a-6b5c4ebf7a04")
LENA_UPN, OMAR_UPN = "lena.fischer@northwind.example", "omar.haddad@northwind.example"
SALES, PORTAL_ADMINS = "8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c01", "8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c03"
PORTAL = "https://" + PORTAL_HOST


# -- reading the USERS tab as the admin sees it ---------------------------------------------------------------

class _Rows(HTMLParser):
    """The USERS table's rows as {email: {column label: text}}, and the pager's "Older" link."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.older: str | None = None
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self._link: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._cell = a.get("data-label")
            self._row[self._cell] = ""
        elif tag == "a" and a.get("rel") == "next":
            self.older = a["href"].replace("&amp;", "&")

    def handle_data(self, data):
        if self._row is not None and self._cell:
            self._row[self._cell] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr" and self._row:
            row = {k: " ".join(v.split()) for k, v in self._row.items()}
            self.rows[row["Email"]] = row
            self._row = None


def users_tab(open_page) -> dict[str, dict[str, str]]:
    """Every row of Settings → USERS, page after page, as the admin's browser shows them."""
    rows, path = {}, "/settings/users"
    while path:
        parser = _Rows()
        parser.feed(open_page(path))
        assert parser.rows, f"no users on {path}"
        rows.update(parser.rows)
        path = parser.older
    return rows


# -- the two configurations ------------------------------------------------------------------------------------

class DemoWorld:
    """Demo mode: Flask test clients, the emulator under /_entra and demo.py's wiring to /scim/v2/."""

    tenant_url = "http://portal.test/scim/v2/"

    def __init__(self, app) -> None:
        self.app, self.emu = app, app.extensions["entra_emulator"]
        self.admin = app.test_client()
        password_sign_in(self.admin, ADMIN)

    def page(self, path: str) -> str:
        resp = self.admin.get(path)
        assert resp.status_code == 200, (path, resp.status_code)
        return resp.get_data(as_text=True)

    def submit(self, path: str, button: str, **kwargs) -> str:
        return submit(self.admin, self.admin.get(path), button, follow_redirects=True, **kwargs).get_data(as_text=True)

    def member(self, email: str):
        client = self.app.test_client()
        back = sso_sign_in(client, email)
        assert back.status_code == 303 and signed_in(client), back.get_data(as_text=True)[:2000]
        return client

    def signed_in(self, member) -> bool:
        return signed_in(member)

    def may_see_settings(self, member) -> bool:
        return member.get("/settings/users").status_code == 200

    def sign_in(self, email: str) -> tuple[int, str]:
        """A fresh browser's Microsoft sign-in: the status and text of where it ends."""
        client = self.app.test_client()
        end = sso_sign_in(client, email)
        return end.status_code, end.get_data(as_text=True)


class ProductionWorld:
    """The production configuration: PortalBrowser over https, the emulator on Microsoft's hosts."""

    tenant_url = PORTAL + "/scim/v2/"

    def __init__(self, app, emu) -> None:
        self.app, self.emu = app, emu
        emu.provisioning_session.mount(PORTAL + "/", WSGIAdapter(app))  # Entra reaches the portal over https
        self.admin = self._browser()
        self.admin.sign_in_locally(ADMIN, PASSWORD)
        self.page("/settings/security")
        assert "Before you continue to Microsoft" in self.admin.submit("Activate SSO")
        self.admin.submit("Continue to Microsoft")
        assert self.admin.at_microsoft(ADMIN).url == PORTAL + "/settings/security"

    def _browser(self) -> PortalBrowser:
        return PortalBrowser({PORTAL_HOST: self.app, "login.microsoftonline.com": self.emu.wsgi}, PORTAL)

    def page(self, path: str) -> str:
        page = self.admin.open(path)
        assert page.status == 200 and page.url == PORTAL + path, (path, page.status, page.url)
        return page.text

    def submit(self, path: str, button: str, **kwargs) -> str:
        self.page(path)
        return self.admin.submit(button, **kwargs).text

    def member(self, email: str) -> PortalBrowser:
        browser = self._browser()
        home = browser.sso_sign_in(email)
        assert home.url == PORTAL + "/" and home.status == 200, home.text[:2000]
        return browser

    def signed_in(self, member: PortalBrowser) -> bool:
        page = member.open("/profile/")
        return page.status == 200 and page.url == PORTAL + "/profile/"

    def may_see_settings(self, member: PortalBrowser) -> bool:
        page = member.open("/settings/users")
        return page.status == 200 and page.url == PORTAL + "/settings/users"

    def sign_in(self, email: str) -> tuple[int, str]:
        page = self._browser().sso_sign_in(email)
        return page.status, page.text


@pytest.fixture
def demo_world(app, active):
    return DemoWorld(app)


@pytest.fixture
def production_world(prod_app, prod_emulator):
    return ProductionWorld(prod_app, prod_emulator)


# -- the admin's steps in the portal ----------------------------------------------------------------------------

def generate_token(world) -> str:
    """SECURITY → User provisioning (SCIM) → Generate token: the token shown once, with the Tenant URL."""
    text = world.submit("/settings/security", "Generate token")
    tenant_url = re.search(r'id="tenant-url"[^>]*\bvalue="([^"]*)"', text)
    token = re.search(r'id="secret-token"[^>]*\bvalue="([^"]*)"', text)
    assert tenant_url and token, text[:3000]
    assert tenant_url.group(1) == world.tenant_url and len(token.group(1)) == 64
    return token.group(1)


def set_admin_group(world, name: str) -> None:
    """SECURITY → Members of this group are admins → the group → Save admin group."""
    text = world.page("/settings/security")
    options = {label.strip(): value for value, label in
               re.findall(r'<option[^>]*\bvalue="([^"]*)"[^>]*>([^<]*)</option>', text)}
    assert name in options, options
    world.submit("/settings/security", "Save admin group", fields={"group": options[name]})


def provision(world, **expected) -> dict:
    """Provision now (the emulator's cycle); the summary must show no error and the counts given."""
    summary = world.emu.provision(NW)
    assert summary["errors"] == [], summary["errors"]
    for kind, counts in expected.items():
        assert {k: summary[kind][k] for k in counts} == counts, summary
    return summary


# -- the journey --------------------------------------------------------------------------------------------------

def journey(world) -> None:
    emu = world.emu
    staff = emu.add_users(NW, 47)  # with Lena, Omar and Jun: 50 people to provision
    emu.set_group_members(SALES, [LENA] + [u.oid for u in staff[:24]])
    emu.set_group_members(PORTAL_ADMINS, [OMAR])
    emu.set_tenant(NW, assigned=[LENA, OMAR, JUN] + [u.oid for u in staff] + [SALES, PORTAL_ADMINS])
    emu.configure_provisioning(NW, tenant_url=world.tenant_url, token=generate_token(world))
    assert emu.store.provisioning(NW)["external_id"] is None  # the emulator's default, objectId, as the README says

    # The first cycle: 50 users and 2 groups, on the USERS tab before anyone signs in.
    provision(world, users={"created": 50}, groups={"created": 2})
    rows = users_tab(world.page)
    assert len(rows) == 51  # and the admin
    for upn in [LENA_UPN, OMAR_UPN] + [u.upn for u in staff]:
        assert rows[upn]["Status"].startswith("Provisioned — not signed in yet"), rows[upn]
        assert "Managed by Microsoft Entra" in rows[upn]["Status"] and rows[upn]["Role"] == "Member"
    assert rows[LENA_UPN]["Name"] == "Lena Fischer"
    assert provision(world, users={"unchanged": 50}, groups={"unchanged": 2})["requests"] == 52  # look-ups only

    # Lena signs in with Microsoft: she is the provisioned user (linked by object id), not a new one.
    lena = world.member(LENA_UPN)
    rows = users_tab(world.page)
    assert len(rows) == 51 and rows[LENA_UPN]["Status"].startswith("Active")

    # Disabled in Entra: the next cycle blocks her, her live session ends, her sign-in is refused.
    emu.set_user_state(LENA, "disabled")
    provision(world, users={"disabled": 1})
    assert not world.signed_in(lena)
    assert users_tab(world.page)[LENA_UPN]["Status"].startswith("Blocked")
    status, text = world.sign_in(LENA_UPN)
    assert status == 400 and "AADSTS50057" in text  # Microsoft itself refuses a disabled account
    emu.set_user_state(LENA, "enabled")  # enabled again at Microsoft, before Entra's next cycle
    status, text = world.sign_in(LENA_UPN)
    assert status == 403 and "Your account is blocked" in text  # the portal refuses until the cycle
    provision(world, users={"updated": 1})
    assert users_tab(world.page)[LENA_UPN]["Status"].startswith("Active")
    lena = world.member(LENA_UPN)

    # Members of Portal Admins are admins: Omar at once; Lena when she joins; Omar back to member when he leaves.
    set_admin_group(world, "Portal Admins")
    assert users_tab(world.page)[OMAR_UPN]["Role"] == "Admin"
    emu.set_group_members(PORTAL_ADMINS, [OMAR, LENA])
    provision(world, groups={"updated": 1})
    assert users_tab(world.page)[LENA_UPN]["Role"] == "Admin" and world.may_see_settings(lena)
    emu.set_group_members(PORTAL_ADMINS, [LENA])
    provision(world, groups={"updated": 1})
    rows = users_tab(world.page)
    assert rows[OMAR_UPN]["Role"] == "Member" and rows[LENA_UPN]["Role"] == "Admin"
    emu.set_group_members(PORTAL_ADMINS, [])
    provision(world, groups={"updated": 1})
    assert users_tab(world.page)[LENA_UPN]["Role"] == "Member" and not world.may_see_settings(lena)

    # Unassigned (and in no assigned group): deprovisioned, i.e. blocked. Hard-deleted: removed.
    leaver, deleted = staff[30], staff[31]
    emu.set_tenant(NW, assigned=[i for i in emu.tenant_settings(NW)["assigned"] if i != leaver.oid])
    emu.set_user_state(deleted.oid, "deleted")
    provision(world, users={"disabled": 1, "deleted": 1})
    rows = users_tab(world.page)
    assert rows[leaver.upn]["Status"].startswith("Blocked") and deleted.upn not in rows and len(rows) == 50

    # Every change is in the audit log with the actor Microsoft Entra provisioning.
    audit = world.page("/settings/audit")
    assert "Microsoft Entra provisioning" in audit


def test_the_journey_in_demo_mode(demo_world):
    journey(demo_world)


def test_the_journey_in_the_production_configuration(production_world):
    journey(production_world)


def test_demo_mode_prints_and_serves_the_provisioning_page(app, runner):
    result = runner.invoke(args=["demo", "--no-serve"])
    assert result.exit_code == 0 and demo.provisioning_page(app) in result.output
    page = app.test_client().get(demo.provisioning_page(app).removeprefix("http://portal.test"))
    assert page.status_code == 200 and "Sign in as an administrator" in page.get_data(as_text=True)


# -- failures Entra meets -----------------------------------------------------------------------------------------

def test_a_wrong_token_is_a_401_in_the_summary_and_changes_nothing(app, demo_world):
    emu = demo_world.emu
    generate_token(demo_world)
    emu.set_tenant(NW, assigned=[LENA, OMAR, SALES])
    emu.configure_provisioning(NW, tenant_url=demo_world.tenant_url, token="not-the-token")
    before = dump_database(app)
    summary = emu.provision(NW)
    assert summary["users"]["created"] == 0 and summary["groups"]["created"] == 0
    assert len(summary["errors"]) == 3 and all(": 401" in e for e in summary["errors"]), summary["errors"]
    assert dump_database(app) == before


class DatabaseStops:
    """The portal's database stops answering in the middle of a request: once a statement starting with `after`
    has run, every statement fails as with a server that went away (OperationalError), until `back()`."""

    def __init__(self, app) -> None:
        self.down, self.after, self.seen = False, None, []
        with app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self._execute)

    def _execute(self, conn, cursor, statement, *args):
        if self.down:
            raise OperationalError(statement, {}, ConnectionError("the server closed the connection"))
        if self.after and statement.lstrip().upper().startswith(self.after):
            self.seen.append(statement)
            self.down = True  # this one runs; the next one finds the server gone

    def back(self) -> None:
        self.down, self.after = False, None
        event.remove(self.engine, "before_cursor_execute", self._execute)


def test_the_database_stops_during_a_cycle_errors_are_shown_and_nothing_is_half_stored(app, demo_world):
    emu = demo_world.emu
    staff = emu.add_users(NW, 20)
    emu.set_group_members(SALES, [u.oid for u in staff[:10]])
    emu.set_tenant(NW, assigned=[u.oid for u in staff] + [SALES])
    emu.configure_provisioning(NW, tenant_url=demo_world.tenant_url, token=generate_token(demo_world))
    stops = DatabaseStops(app)
    portal = WSGIAdapter(app)
    seen = {"requests": 0}

    def counting(environ, start_response):
        # The 12th request (the 6th user's POST) inserts the user, then finds the database gone.
        seen["requests"] += 1
        if seen["requests"] == 12:
            stops.after = "INSERT INTO USERS"
        return app(environ, start_response)

    emu.provisioning_session.mount("http://portal.test/", WSGIAdapter(counting))
    summary = emu.provision(NW)
    stops.back()
    emu.provisioning_session.mount("http://portal.test/", portal)
    assert stops.seen and summary["users"]["created"] == 5, summary
    assert summary["errors"] and all(" 503" in e for e in summary["errors"]), summary["errors"]

    # Nothing half-stored: exactly the five users Entra got an id for, each whole (email, audit event).
    with app.app_context():
        provisioned = db.session.execute(db.select(User).where(User.scim_id.is_not(None))).scalars().all()
        assert sorted(u.scim_id for u in provisioned) == sorted(
            p["scim_id"] for p in emu.store.provisioned(NW, "user").values())
        assert len(provisioned) == 5 and all(u.email_hmac and u.email_enc for u in provisioned)
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 6  # and the admin
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroup)) == 0
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroupMember)) == 0
        audited = db.session.execute(db.select(AuditEvent.action, AuditEvent.detail).where(
            AuditEvent.by_provisioning.is_(True))).all()
        assert all(any(f"user {u.id}" in detail for _, detail in audited) for u in provisioned), audited

    # Back up: the next cycle finishes the job.
    provision(demo_world, users={"created": 15, "unchanged": 5}, groups={"created": 1})
    assert len(users_tab(demo_world.page)) == 21
