"""App roles: assignments to users and groups per tenant, and the `roles` claim of the ID token."""
import pytest

from emulator_flows import tokens_for, verify_id_token


def roles(http, browser, upn):
    claims = verify_id_token(http, tokens_for(http, browser, upn)["id_token"])
    return claims.get("roles")


def test_no_assignment_no_roles_claim(http, browser):
    assert roles(http, browser, "lena.fischer@northwind.example") is None


def test_user_assignment_issues_roles_until_removed(emu, http, browser):
    emu.assign_app_role("lena.fischer@northwind.example")
    assert roles(http, browser, "lena.fischer@northwind.example") == ["Portal.Admin"]
    assert roles(http, browser, "omar.haddad@northwind.example") is None  # only the one assigned
    emu.unassign_app_role("lena.fischer@northwind.example")
    assert roles(http, browser, "lena.fischer@northwind.example") is None


def test_group_assignment_reaches_its_members_only(emu, http, browser):
    emu.assign_app_role("Operations")
    assert roles(http, browser, "jun.park@northwind.example") == ["Portal.Admin"]
    assert roles(http, browser, "lena.fischer@northwind.example") is None
    emu.assign_app_role("1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02")  # Lena, by oid
    emu.unassign_app_role("Operations")
    assert roles(http, browser, "jun.park@northwind.example") is None
    assert roles(http, browser, "lena.fischer@northwind.example") == ["Portal.Admin"]


def test_assignments_are_per_tenant(emu, http, browser):
    emu.assign_app_role("Materials lab/fabrikam.example")
    assert roles(http, browser, "ines.moreau@fabrikam.example") == ["Portal.Admin"]
    assert emu.store.app_role_assignments("6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f", next(iter(emu.clients))) == []


def test_unknown_role_or_principal_is_refused(emu):
    with pytest.raises(ValueError):
        emu.assign_app_role("lena.fischer@northwind.example", "Portal.Owner")
    with pytest.raises(KeyError):
        emu.assign_app_role("nobody@northwind.example")
