"""One place decides who may do what: every service that changes an organisation refuses anyone but its own
admins and the operator (CLI), whoever calls it (views guard Settings too, for the 403 page)."""
from __future__ import annotations

import pytest

from domain import auditlog, consent, directory, members, passwords, policy, profiles, signin
from domain.errors import NotAllowed
from helpers import PASSWORD
from models import AuditEvent, db

SERVICES = {
    "store profiles off": lambda org, actor: profiles.set_store_profiles(org, False, actor),
    "purge copies": lambda org, actor: profiles.purge_profile_copies(org, actor),
    "deactivate SSO": lambda org, actor: signin.deactivate_sso(org, actor),
    "require SSO": lambda org, actor: consent.set_require_sso(org, actor, False),
    "rename": lambda org, actor: directory.rename_organization(org, "Someone Else's", actor),
    "add domain": lambda org, actor: directory.add_domain(org, "taken-over.example", actor),
    "audit log": lambda org, actor: auditlog.audit_page(org, 1, actor),
    "users tab": lambda org, actor: members.members_page(org, 1, actor),
    "a user": lambda org, actor: members.member(org, _omar().id, actor),
    "make admin": lambda org, actor: members.set_role(org, _omar(), "admin", actor),
    "block": lambda org, actor: members.set_blocked(org, _omar(), True, actor),
    "sign out everywhere": lambda org, actor: members.sign_out_everywhere(org, _omar(), actor),
    "remove": lambda org, actor: members.remove(org, _omar(), actor),
    "admins from Entra": lambda org, actor: members.set_admins_from_entra(org, True, actor),
}


def _omar():
    return directory.users_by_email("omar.haddad@northwind.example")[0]


@pytest.fixture
def people(app, northwind):
    with app.app_context():
        directory.create_organization("Fabrikam Research", ["fabrikam.example"])
        passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD, role="member")
        passwords.create_local_user("admin@fabrikam.example", "Fabrikam Research", PASSWORD, role="admin")


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("who", ["omar.haddad@northwind.example", "admin@fabrikam.example", None])
def test_only_the_organisations_admins_may(app, people, service, who):
    with app.app_context():
        org = directory.get_organization("Northwind Traders")
        actor = directory.users_by_email(who)[0] if who else None
        before = db.session.scalar(db.select(db.func.count()).select_from(AuditEvent))
        with pytest.raises(NotAllowed):
            SERVICES[service](org, actor)
        db.session.rollback()
        org = directory.get_organization("Northwind Traders")
        assert org.name == "Northwind Traders" and {d.name for d in org.domains} == {"northwind.example"}
        assert db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)) == before
        omar = _omar()
        assert (omar.role, omar.blocked, org.admins_from_entra) == ("member", False, False)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("who", ["admin@northwind.example", "operator"])
def test_its_admins_and_the_operator_may(app, people, service, who):
    with app.app_context():
        actor = policy.OPERATOR if who == "operator" else directory.users_by_email(who)[0]
        SERVICES[service](directory.get_organization("Northwind Traders"), actor)  # no NotAllowed
