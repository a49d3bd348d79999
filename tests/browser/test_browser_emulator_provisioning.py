"""The emulator's Provisioning page in Chromium: axe-clean, no inline script, no sideways scroll at 360 px, and a
cycle run from it (the portal has no SCIM endpoint yet, so the cycle reports its failed look-up)."""
from __future__ import annotations

from helpers import NORTHWIND_TID


def test_provisioning_page_saves_and_runs_a_cycle_at_360_px(narrow_walk, portal):
    walk = narrow_walk
    client_id = portal.app.config["ENTRA_CLIENT_ID"]
    walk.page.goto(portal.microsoft_url + f"{NORTHWIND_TID}/enterprise-applications/{client_id}/provisioning")
    walk.at("Sign in as an administrator", "microsoft-admin-sign-in").click("Sign in")
    walk.at("Provisioning", "microsoft-provisioning")
    assert "No cycle has run yet." in walk.page.inner_text("main")
    walk.fill("Tenant URL", "http://127.0.0.1:9/scim/v2").fill("Secret Token", "not-a-real-token")
    walk.page.get_by_label("Lena Fischer assigned").check()
    walk.click("Provision now").at("Provisioning", "microsoft-provisioning-after-cycle")
    facts = walk.facts()
    assert facts["Users"] == "0 created, 0 updated, 0 disabled, 0 deleted, 0 unchanged"
    assert facts["Errors"] == "1"  # nothing answers at that address: one failed look-up, shown, not a crash
    assert walk.page.get_by_label("Lena Fischer assigned").is_checked()
    assert "not-a-real-token" not in walk.page.content()
