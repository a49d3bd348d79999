"""The emulator as a whole: the transport's timeouts and delays, state shared by processes, its data, its static files."""
import time

import pytest
import requests
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from emulator import Emulator
from emulator_flows import (BROWSER, LOGIN, TOKEN_URL, NW, FB, CLIENTS, make_emulator, sign_in, redeem, token_error)


def test_fault_timeout(emu, http):
    emu.faults["timeout"] = {"graph.microsoft.com",
                             "login.microsoftonline.com/organizations/oauth2/v2.0/token"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get("https://graph.microsoft.com/v1.0/me", timeout=3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(TOKEN_URL, data={})
    # Other URLs still answer, and every attempt is recorded with its timeout.
    assert http.get(f"{LOGIN}/organizations/discovery/v2.0/keys").status_code == 200
    assert emu.requests[0] == ("GET", "https://graph.microsoft.com/v1.0/me", 3)
    assert len(emu.requests) == 3


def test_fault_slow_answers_late_or_times_out_at_the_callers_timeout(emu, http):
    emu.faults["slow"] = {"login.microsoftonline.com/organizations/discovery": 0.3}
    started = time.monotonic()
    assert http.get(f"{LOGIN}/organizations/discovery/v2.0/keys", timeout=2).status_code == 200
    assert 0.3 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(f"{LOGIN}/organizations/discovery/v2.0/keys", timeout=0.1)  # as a real socket: no longer
    assert 0.1 <= time.monotonic() - started < 1


def test_two_emulators_share_state(tmp_path, seed):
    first = make_emulator(tmp_path / "shared", seed)
    second = make_emulator(tmp_path / "shared", seed)
    http1, http2 = first.mount(requests.Session()), second.mount(requests.Session())
    browser1 = Client(DispatcherMiddleware(NotFound(), {"/_entra": first.wsgi}))
    browser2 = Client(DispatcherMiddleware(NotFound(), {"/_entra": second.wsgi}))
    keys = lambda http: http.get(f"{LOGIN}/common/discovery/v2.0/keys").json()  # noqa: E731
    assert keys(http1) == keys(http2)
    assert first.secret_key == second.secret_key
    first.rotate_signing_key()
    assert keys(http1) == keys(http2) and len(keys(http2)["keys"]) == 2

    params, verifier = sign_in(browser1, "lena.fischer@northwind.example")
    assert redeem(http2, params["code"], verifier).status_code == 200
    token_error(redeem(http1, params["code"], verifier), 400, "invalid_grant", 54005)
    # Lena's consent, given through the first, is known to the second.
    params, _ = sign_in(browser2, "lena.fischer@northwind.example", accept=None)
    assert "code" in params
    second.set_tenant(FB, users_may_consent=False)
    assert first.tenant_settings(FB)["users_may_consent"] is False


def test_fresh_instance_folder_is_created(tmp_path):
    folder = tmp_path / "new" / "instance"
    emu = Emulator(str(folder), browser_url=BROWSER, clients=CLIENTS)
    assert (folder / "entra-emulator.sqlite").exists()
    assert len(emu.keys.jwks()["keys"]) == 1


def test_directory_demo_data(emu):
    directory = emu.directory
    assert [t.name for t in directory.tenants] == ["Northwind Traders", "Fabrikam Research"]
    assert directory.tenant("NORTHWIND.example").tid == NW
    for tenant in directory.tenants:
        assert [u.role for u in tenant.users].count("admin") == 1
        assert sum(u.photo is None for u in tenant.users) == 1
        for user in tenant.users:
            assert user.profile["userPrincipalName"] == user.upn
            if user.photo:
                assert user.photo.startswith(b"\x89PNG") and user.photo_type == "image/png"
    assert not directory.email_domain_verified(directory.user_by_upn("jun.park@northwind.example"))
    assert directory.email_domain_verified(directory.user_by_upn("priya.nair@fabrikam.example"))
    assert directory.user_by_upn("nobody@northwind.example") is None


def test_static_stylesheet_is_served(browser):
    response = browser.get("/_entra/static/emulator.css")
    assert response.status_code == 200 and "text/css" in response.headers["Content-Type"]
