"""The emulator's browser pages: authorize and admin consent (sign-in, consent, approval), sign-out, its cookie."""
from urllib.parse import urlencode

import pytest

from emulator_flows import (CLIENT_ID, NW, FB, pkce, authorize_path, form_of, submit, callback, page_kind, sign_in,
                            assert_aadsts, adminconsent_path)


def test_unknown_client_is_an_error_page(browser):
    response = browser.get(authorize_path(client_id="00000000-0000-0000-0000-000000000000"))
    assert response.status_code == 400
    assert "AADSTS700016" in response.get_data(as_text=True)


def test_unregistered_redirect_uri_is_an_error_page_not_a_redirect(browser):
    response = browser.get(authorize_path(redirect_uri="https://evil.example/cb"))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "AADSTS50011" in response.get_data(as_text=True)
    assert "demo only" in response.get_data(as_text=True)


def test_unknown_tenant_is_an_error_page(browser):
    response = browser.get(authorize_path("nowhere.example"))
    assert response.status_code == 400 and "AADSTS90002" in response.get_data(as_text=True)


@pytest.mark.parametrize("challenge, method", [(None, "S256"), ("abc", "plain"), ("abc", None)])
def test_pkce_is_required(browser, challenge, method):
    params = callback(browser.get(authorize_path(challenge=challenge,
                                                 code_challenge_method=method)))
    assert params["error"] == "invalid_request" and params["state"] == "st-1"
    assert params["error_description"].startswith("AADSTS")


def test_signin_page_lists_tenant_users_only(browser):
    html = browser.get(authorize_path(NW)).get_data(as_text=True)
    assert "lena.fischer@northwind.example" in html and "fabrikam.example" not in html
    assert "checked" not in html
    html = browser.get(authorize_path("organizations")).get_data(as_text=True)
    assert "lena.fischer@northwind.example" in html and "ines.moreau@fabrikam.example" in html
    assert "Emulated Microsoft Entra ID — demo only" in html
    assert "<script" not in html and '<label for="u-' in html


def test_signed_in_session_skips_signin_unless_prompt_login(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    verifier, challenge = pkce()
    params = callback(browser.get(authorize_path(challenge=challenge)))  # no hint
    assert "code" in params
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="lena.fischer@northwind.example"))
    assert "code" in callback(response)
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    assert page_kind(response) == "signin"
    assert "code" in callback(submit(browser, response,
                                     username="lena.fischer@northwind.example"))
    # A different hint means a different account: show the sign-in page.
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="omar.haddad@northwind.example"))
    assert page_kind(response) == "signin"


def test_signin_without_choice_shows_the_page_again(browser):
    response = browser.get(authorize_path())
    again = submit(browser, response)
    assert page_kind(again) == "signin" and "Choose an account" in again.get_data(as_text=True)


def test_post_without_csrf_token_is_rejected(browser):
    response = browser.get(authorize_path())
    action, hidden = form_of(response)
    hidden.pop("csrf_token")
    rejected = browser.post(action, data={**hidden, "username": "admin@northwind.example"})
    assert rejected.status_code == 400


def test_prompt_none_without_session(browser):
    params = callback(browser.get(authorize_path(prompt="none")))
    assert params["error"] == "login_required"


def test_user_of_other_tenant_is_refused(browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(FB, challenge))
    params = callback(submit(browser, response, username="lena.fischer@northwind.example"))
    assert params["error"] == "access_denied" and params["state"] == "st-1"
    assert_aadsts(params["error_description"], 50020)


def test_assignment_required(emu, browser):
    lena = emu.directory.user_by_upn("lena.fischer@northwind.example")
    emu.set_tenant(NW, assignment_required=True, assigned=[lena.oid])
    params, _ = sign_in(browser, "omar.haddad@northwind.example")
    assert params["error"] == "access_denied"
    assert_aadsts(params["error_description"], 50105)
    params, _ = sign_in(browser, "lena.fischer@northwind.example")
    assert "code" in params


def test_consent_cancel(browser):
    params, _ = sign_in(browser, "lena.fischer@northwind.example", accept=False)
    assert params["error"] == "access_denied" and params["error_subcode"] == "cancel"
    assert params["state"] == "st-1"
    assert params["error_description"].startswith(
        "AADSTS65004: User declined to consent to access the app.")


def test_consent_is_remembered(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert "code" in callback(response)  # no consent page the second time


def test_prompt_consent_always_asks(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    _, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="consent"))
    assert page_kind(response) == "consent"
    assert "code" in callback(submit(browser, response, decision="accept"))


def test_prompt_none_needing_consent(browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert page_kind(response) == "consent"
    params = callback(browser.get(authorize_path(challenge=challenge, prompt="none")))
    assert params["error"] == "consent_required"
    assert_aadsts(params["error_description"], 65001)


def test_admin_consent_on_behalf_skips_member_consent(emu, browser):
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge,
                                          login_hint="admin@northwind.example"))
    response = submit(browser, response, username="admin@northwind.example")
    assert "Consent on behalf of your organization" in response.get_data(as_text=True)
    assert "code" in callback(submit(browser, response, decision="accept", on_behalf="yes"))
    assert emu.has_admin_consent(NW, CLIENT_ID) and not emu.has_admin_consent(FB, CLIENT_ID)
    params, _ = sign_in(browser, "omar.haddad@northwind.example", accept=None)
    assert "code" in params


def test_admin_consent_without_box_is_personal(emu, browser):
    sign_in(browser, "admin@northwind.example")
    assert not emu.has_admin_consent(NW, CLIENT_ID)


def test_users_may_not_consent(emu, browser):
    emu.set_tenant(NW, users_may_consent=False)
    verifier, challenge = pkce()
    response = browser.get(authorize_path(challenge=challenge))
    response = submit(browser, response, username="lena.fischer@northwind.example")
    assert page_kind(response) == "approval"
    assert "Need admin approval" in response.get_data(as_text=True)
    # Forging a consent POST does not get around the switch.
    forged = browser.post(form_of(response)[0], data={**form_of(response)[1],
                                                      "step": "consent", "decision": "accept"})
    assert page_kind(forged) == "approval"
    params = callback(submit(browser, response))
    assert params["error"] == "access_denied" and params["state"] == "st-1"
    assert_aadsts(params["error_description"], 90094)
    # An admin still gets the consent page with the organisation box.
    response = browser.get(authorize_path(challenge=challenge, prompt="login"))
    response = submit(browser, response, username="admin@northwind.example")
    assert page_kind(response) == "consent"
    assert "on behalf of your organization" in response.get_data(as_text=True)


def test_logout_redirects_to_registered_origin_and_clears_session(browser):
    sign_in(browser, "lena.fischer@northwind.example")
    response = browser.get("/_entra/organizations/oauth2/v2.0/logout?" + urlencode(
        {"post_logout_redirect_uri": "http://localhost/signed-out",
         "logout_hint": "x"}))
    assert response.status_code == 302
    assert response.headers["Location"] == "http://localhost/signed-out"
    assert page_kind(browser.get(authorize_path())) == "signin"


def test_logout_to_foreign_origin_shows_page(browser):
    response = browser.get("/_entra/organizations/oauth2/v2.0/logout?" + urlencode(
        {"post_logout_redirect_uri": "https://evil.example/"}))
    assert response.status_code == 200
    assert "You signed out of your account" in response.get_data(as_text=True)


def test_adminconsent_checks_client_and_redirect(browser):
    response = browser.get(adminconsent_path(client_id="nobody"))
    assert response.status_code == 400 and "AADSTS700016" in response.get_data(as_text=True)
    response = browser.get(adminconsent_path(redirect_uri="https://evil.example/"))
    assert response.status_code == 400 and "AADSTS50011" in response.get_data(as_text=True)


def test_adminconsent_by_member_is_refused(browser):
    response = browser.get(adminconsent_path())
    html = response.get_data(as_text=True)
    assert page_kind(response) == "signin" and "fabrikam.example" not in html
    params = callback(submit(browser, response, username="lena.fischer@northwind.example"))
    assert params["error"] == "access_denied" and params["admin_consent"] == "True"
    assert params["tenant"] == NW and params["state"] == "ac-1"
    assert_aadsts(params["error_description"], 90094)


def test_adminconsent_accept_then_immediate(emu, browser):
    response = submit(browser, browser.get(adminconsent_path()),
                      username="admin@northwind.example")
    assert page_kind(response) == "adminconsent"
    assert "Accept for your organization" in response.get_data(as_text=True)
    params = callback(submit(browser, response, decision="accept"))
    assert params == {"admin_consent": "True", "tenant": NW, "state": "ac-1",
                      "scope": "https://graph.microsoft.com/User.Read"}
    assert emu.has_admin_consent(NW, CLIENT_ID)
    assert callback(browser.get(adminconsent_path()))["admin_consent"] == "True"
    params, _ = sign_in(browser, "lena.fischer@northwind.example", accept=None, prompt="login")
    assert "code" in params  # members are asked nothing now


def test_adminconsent_cancel(emu, browser):
    response = submit(browser, browser.get(adminconsent_path()),
                      username="admin@northwind.example")
    params = callback(submit(browser, response, decision="cancel"))
    assert params["error"] == "consent_required" and params["admin_consent"] == "True"
    assert params["tenant"] == NW and params["state"] == "ac-1"
    assert_aadsts(params["error_description"], 65004)
    assert not emu.has_admin_consent(NW, CLIENT_ID)


def test_session_cookie_is_scoped_to_the_mount(browser):
    response = browser.get(authorize_path())
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("entra_emulator_session=") and "Path=/_entra" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
