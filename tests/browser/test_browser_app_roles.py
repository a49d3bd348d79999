"""The emulated Entra admin centre's Users and groups page in a real browser (JavaScript off, axe clean)."""
from __future__ import annotations

from helpers import NORTHWIND_TID


def test_entra_admin_assigns_portal_admin_on_users_and_groups(walk, portal):
    emu = portal.app.extensions["entra_emulator"]
    client_id = portal.app.config["ENTRA_CLIENT_ID"]
    walk.page.goto(portal.microsoft_url + f"{NORTHWIND_TID}/enterprise-applications/{client_id}/users-and-groups")
    walk.at("Sign in as an administrator", "microsoft-admin-sign-in").click("Sign in")
    walk.at("Users and groups", "microsoft-users-and-groups")
    walk.click("Assign Portal.Admin to Operations").at("Users and groups", "microsoft-users-and-groups-assigned")
    assert walk.page.get_by_role("button", name="Remove Portal.Admin from Operations").is_visible()
    jun = emu.directory.user_by_upn("jun.park@northwind.example")
    assert emu.roles_of(jun, client_id) == ["Portal.Admin"]  # a member of Operations
