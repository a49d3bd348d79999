"""Browser fixtures: a live portal per test, Debian's Chromium once per run, and a checked walk through it.

Chromium and axe-core are installed by .ci/run (apt, npm). Under CI (CI=true) a missing one fails the run;
on a developer's machine the browser tests are skipped with the reason instead.
"""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import sync_playwright

from tests.browser.live import AXE_JS, CHROMIUM, LivePortal, launch_chromium
from tests.browser.steps import WIDE, Auditor, Walk

NORTHWIND_ADMIN = "admin@northwind.example"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it in .ci/run; the browser tests must not be skipped there)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def playwright():
    """Playwright, started once per run (its sync API cannot be started twice in one process at a time)."""
    if not os.path.exists(CHROMIUM):
        _missing(f"no browser at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright):
    if not os.path.exists(AXE_JS):
        _missing(f"no axe-core at {AXE_JS}: npm ci")
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def auditor(browser):
    auditor = Auditor(browser)
    yield auditor
    auditor.close()


@pytest.fixture
def portal(tmp_path):
    """The portal in demo mode on 127.0.0.1 and a free port, with the demo organisations and admins."""
    with LivePortal(str(tmp_path / "instance")) as live:
        yield live


@pytest.fixture
def northwind_sso(portal):
    """Northwind with SSO activated by its admin (through the real routes, in-process: it is set-up here)."""
    from demo import DEMO_PASSWORD
    from helpers import activate_sso, sign_out

    client = portal.app.test_client()
    assert activate_sso(client, admin=NORTHWIND_ADMIN, password=DEMO_PASSWORD).status_code == 303
    sign_out(client)
    return portal


def new_walk(browser, portal, auditor, **context) -> Walk:
    """A fresh browser profile with JavaScript off: every page must work without it."""
    ctx = browser.new_context(java_script_enabled=False, **{"viewport": WIDE, **context})
    return Walk(ctx.new_page(), portal, auditor)


@pytest.fixture
def walk(browser, portal, auditor):
    w = new_walk(browser, portal, auditor)
    yield w
    w.page.context.close()


@pytest.fixture
def narrow_walk(browser, portal, auditor):
    """A phone-sized (360 px) window."""
    w = new_walk(browser, portal, auditor, viewport={"width": 360, "height": 740})
    yield w
    w.page.context.close()
