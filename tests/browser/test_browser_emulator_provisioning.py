"""The emulator's Provisioning page in Chromium: axe-clean, no inline script, no sideways scroll at 360 px, and a
cycle run from it (the portal has no SCIM endpoint yet, so the cycle reports its failed look-up)."""
NW = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"


def test_provisioning_page_saves_and_runs_a_cycle_at_360_px(narrow_walk):
    walk = narrow_walk
    walk.goto(f"/_entra/{NW}/provisioning").at("Provisioning", "emulator-provisioning")
    assert "No cycle has run yet." in walk.page.inner_text("main")
    walk.fill("Tenant URL", "http://127.0.0.1:9/scim/v2").fill("Secret Token", "not-a-real-token")
    walk.page.get_by_label("Lena Fischer assigned").check()
    walk.click("Provision now").at("Provisioning", "emulator-provisioning-after-cycle")
    facts = walk.facts()
    assert facts["Users"] == "0 created, 0 updated, 0 disabled, 0 deleted, 0 unchanged"
    assert facts["Errors"] == "1"  # nothing answers at that address: one failed look-up, shown, not a crash
    assert walk.page.get_by_label("Lena Fischer assigned").is_checked()
    assert "not-a-real-token" not in walk.page.content()
