"""Steps a person takes in the browser, and the checks every page they reach must pass.

A walkthrough is a test that strings these steps together; `Walk.at()` is where each page is checked
(axe-core, no inline script, 360 px reflow), so a new walkthrough gets those checks for free.
"""
from __future__ import annotations

import re
from typing import Callable

from playwright.sync_api import Browser, Page, expect

from tests.browser.live import AXE_JS, LivePortal

BLOCKING = ("serious", "critical")
NARROW = {"width": 360, "height": 740}
WIDE = {"width": 1280, "height": 800}

_AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""
# Anything the portal's CSP (script-src 'self') would block: inline scripts, handlers, javascript: links.
_INLINE_SCRIPT = """() => {
  const found = [];
  document.querySelectorAll('script:not([src])').forEach(() => found.push('inline <script>'));
  document.querySelectorAll('*').forEach(el => { for (const a of el.attributes) {
    if (a.name.startsWith('on')) found.push(el.tagName.toLowerCase() + ' ' + a.name);
  }});
  document.querySelectorAll('a[href^="javascript:" i]').forEach(() => found.push('javascript: link'));
  return found;
}"""
_OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
_FOCUS_VISIBLE = """() => {
  const el = document.activeElement, style = getComputedStyle(el);
  const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
  return outline || style.boxShadow !== 'none';
}"""
_FOCUSED = """() => { const el = document.activeElement;
  return [el.tagName.toLowerCase(), el.type || '', (el.labels && el.labels[0] ? el.labels[0].innerText : '')
          || el.innerText || el.value || el.getAttribute('aria-label') || ''].join('|'); }"""


class Auditor:
    """Checks a page exactly as the user saw it, in its own JavaScript-enabled, CSP-bypassing context.

    The user's page is never touched: its DOM is replayed here (stylesheets and images still come from the
    live server), so pages reached by a POST are checked too, and the walkthrough itself can run without
    JavaScript and under the portal's CSP.
    """

    def __init__(self, browser: Browser) -> None:
        with open(AXE_JS, encoding="utf-8") as f:
            self._axe = f.read()
        self.context = browser.new_context(bypass_csp=True, viewport=WIDE)
        self.page = self.context.new_page()
        self.page.route("**/*", self._serve)
        self._html = ""

    def _serve(self, route) -> None:
        if route.request.is_navigation_request():
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=self._html)
        else:
            route.continue_()

    def problems(self, page: Page) -> list[str]:
        """What is wrong with the page: serious or critical axe violations, inline script, no reflow at 360 px."""
        self._html = page.content()
        self.context.clear_cookies()
        self.context.add_cookies(page.context.cookies())  # so the profile photo loads as the user saw it
        self.page.set_viewport_size(WIDE)
        self.page.goto(page.url)
        found = [f"script the CSP would block: {what}" for what in self.page.evaluate(_INLINE_SCRIPT)]
        self.page.add_script_tag(content=self._axe)  # after the check above: it is an inline script itself
        found += [f"axe {v['impact']}: {v['id']} — {v['help']} at {v['targets']}"
                  for v in self.page.evaluate(_AXE_RUN) if v["impact"] in BLOCKING]
        self.page.set_viewport_size(NARROW)
        overflow = self.page.evaluate(_OVERFLOW)
        if overflow > 0:
            found.append(f"at 360 px wide the page scrolls sideways by {overflow} px")
        return found

    def close(self) -> None:
        self.context.close()


class Walk:
    """One person's browser tab on the live portal, with the steps of the walkthroughs."""

    def __init__(self, page: Page, portal: LivePortal, auditor: Auditor | None = None,
                 on_arrive: Callable[[str, Page], None] | None = None) -> None:
        self.page = page
        self.portal = portal
        self.auditor = auditor
        self.on_arrive = on_arrive
        self.visited: list[str] = []

    # -- primitives ---------------------------------------------------------------------------

    def at(self, heading: str | re.Pattern, key: str) -> "Walk":
        """Wait for the page whose main heading is `heading`, then check it; `key` names the page."""
        expect(self.page.locator("h1")).to_have_text(heading)
        if self.auditor is not None:
            problems = self.auditor.problems(self.page)
            assert not problems, f"{key} ({self.page.url}):\n  " + "\n  ".join(problems)
        self.visited.append(key)
        if self.on_arrive is not None:
            self.on_arrive(key, self.page)
        return self

    def goto(self, path: str) -> "Walk":
        self.page.goto(self.portal.url(path))
        return self

    def click(self, name: str, role: str = "button") -> "Walk":
        self.page.get_by_role(role, name=name, exact=True).click()
        return self

    def fill(self, label: str, value: str) -> "Walk":
        self.page.get_by_label(label, exact=True).fill(value)
        return self

    def facts(self) -> dict[str, str]:
        """The page's definition list(s) as {term: value}, as a reader sees them."""
        terms = self.page.locator("dl.facts > dt").all_inner_texts()
        values = self.page.locator("dl.facts > dd").all_inner_texts()
        return dict(zip((t.strip() for t in terms), (v.strip() for v in values)))

    def flash(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".flash").all_inner_texts()]

    def on_microsoft(self, url: str | None = None) -> bool:
        """Whether the page (or `url`) is one of Microsoft's, i.e. the emulator's."""
        return (url or self.page.url).startswith(self.portal.microsoft_url)

    # -- keyboard only --------------------------------------------------------------------------

    def tab_to(self, pattern: str, limit: int = 25) -> str:
        """Press Tab until the focused element's name matches `pattern`; every stop must show its focus."""
        for _ in range(limit):
            self.page.keyboard.press("Tab")
            focused = self.page.evaluate(_FOCUSED)
            assert self.page.evaluate(_FOCUS_VISIBLE), f"focus is invisible on {focused} at {self.page.url}"
            if re.search(pattern, focused.rsplit("|", 1)[-1]):
                return focused
        raise AssertionError(f"Tab never reached {pattern!r} on {self.page.url}")

    # -- the portal's steps ---------------------------------------------------------------------

    def open_login(self) -> "Walk":
        return self.goto("/login").at("Sign in", "login")

    def enter_email(self, email: str) -> "Walk":
        return self.fill("Username (email)", email).click("Continue")

    def sign_in_locally(self, email: str, password: str) -> "Walk":
        """Login prompt → email → Continue → password step → Sign in → home."""
        self.open_login().enter_email(email).at("Enter your password", "password")
        return self.fill("Password", password).click("Sign in").at("Welcome", "home")

    def open_security(self) -> "Walk":
        """Settings (top right) → the SECURITY tab."""
        self.click("Settings", role="link").at("Settings", "settings-general")
        return self.click("SECURITY", role="link").at("Settings", "settings-security")

    def continue_to_microsoft(self, key: str = "consent-explanation") -> "Walk":
        return self.at("Before you continue to Microsoft", key).click("Continue to Microsoft")

    def at_microsoft(self, account: str | None = None, *, consent: str | None = "accept",
                     on_behalf: bool = False, signed_in: bool = False) -> "Walk":
        """The emulated Microsoft pages: pick `account`, then answer the consent page.

        consent: "accept" or "cancel" when the consent page must appear, None when it must not.
        signed_in: Microsoft still knows this browser's account, so it shows no account picker.
        """
        if not signed_in:
            self.at(re.compile(r"^(Pick an account|Sign in as an administrator)$"), "microsoft-sign-in")
            if account is not None:
                self.page.get_by_role("radio", name=re.compile(re.escape(account))).check()
            self.click("Sign in")
        if consent is None:
            self.page.wait_for_url(lambda url: not self.on_microsoft(url))
            return self
        self.at("Permissions requested", "microsoft-consent")
        if on_behalf:
            self.page.get_by_label("Consent on behalf of your organization").check()
        self.click("Accept" if consent == "accept" else "Cancel")
        self.page.wait_for_url(lambda url: not self.on_microsoft(url))
        return self

    def activate_sso(self, account: str, **microsoft) -> "Walk":
        """SECURITY → Activate SSO → consent explanation → Microsoft → back on SECURITY."""
        self.click("Activate SSO").continue_to_microsoft("consent-explanation-admin")
        return self.at_microsoft(account, **microsoft)

    def sso_sign_in(self, email: str, *, explanation: bool = True, **microsoft) -> "Walk":
        """Login prompt → email → Continue → (consent explanation) → Microsoft → back at the portal."""
        self.open_login().enter_email(email)
        if explanation:
            self.continue_to_microsoft()
        return self.at_microsoft(email, **microsoft)

    def sign_out(self) -> "Walk":
        self.click("Sign out")
        self.page.wait_for_url(re.compile(r"/login"))
        return self.at("Sign in", "signed-out")

    # -- Settings → USERS ---------------------------------------------------------------------------

    def open_users(self) -> "Walk":
        """Settings (top right) → the USERS tab."""
        self.click("Settings", role="link").at("Settings", "settings-general")
        return self.click("USERS", role="link").at("Settings", "settings-users")

    def user_action(self, email: str, button: str) -> "Walk":
        """Press `button` in the USERS row of `email`; back on the USERS tab."""
        row = self.page.locator("table.users tbody tr").filter(has_text=email)
        row.get_by_role("button", name=button, exact=True).click()
        return self.at("Settings", "settings-users-after")
