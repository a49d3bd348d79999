"""Outbound calls: page views make none; discovery and keys are fetched once per process; all have a timeout,
and the calls of one callback share one deadline."""
from __future__ import annotations

from helpers import activate_sso, password_sign_in, sign_out, sso_sign_in


def _calls(emulator) -> list[str]:
    return [url.split("?")[0].split("/", 3)[3] for _, url, _ in emulator.requests]


def test_page_views_make_no_outbound_call(app, client, emulator, northwind):
    activate_sso(client)
    sign_out(client)
    sso_sign_in(client, "lena.fischer@northwind.example")
    emulator.requests.clear()
    for path in ("/", "/profile/", "/profile/photo", "/healthz", "/settings/"):
        assert client.get(path).status_code in (200, 403), path
    sign_out(client)
    password_sign_in(client, "admin@northwind.example")
    assert client.get("/settings/security").status_code == 200
    assert client.get("/login").status_code in (200, 302)
    assert emulator.requests == []


def test_discovery_and_keys_once_per_process_and_every_call_has_a_timeout(app, client, emulator, northwind):
    activate_sso(client)
    sign_out(client)
    for email in ("lena.fischer@northwind.example", "omar.haddad@northwind.example"):
        assert sso_sign_in(client, email).status_code == 303
        sign_out(client)
    calls = _calls(emulator)
    # Once, read by MSAL and by our token validation alike; never again in this process.
    assert calls.count("organizations/v2.0/.well-known/openid-configuration") == 1
    assert calls.count("organizations/discovery/v2.0/keys") == 1
    assert calls.count("organizations/oauth2/v2.0/token") == 3  # activation and two sign-ins
    assert calls.count("v1.0/me") == 3 and calls.count("v1.0/me/photo/$value") == 3
    assert len(calls) == 11
    limit = app.config["ENTRA_TIMEOUT"]
    assert all(0 < timeout <= limit for _, _, timeout in emulator.requests)
    # Inside a callback each call gets what the previous ones left of the deadline.
    after_token = [t for (_, url, t), name in zip(emulator.requests, calls) if name.startswith("v1.0/me")]
    assert after_token and all(t < limit for t in after_token)


def test_graph_reads_the_basic_profile_and_the_mail_alias_only(app, client, emulator, northwind):
    from urllib.parse import parse_qs, urlsplit

    activate_sso(client)
    [url] = [url for _, url, _ in emulator.requests if urlsplit(url).path.endswith("/v1.0/me")]
    select = parse_qs(urlsplit(url).query)["$select"][0].split(",")
    assert select == ["id", "displayName", "givenName", "surname", "mail", "userPrincipalName", "jobTitle",
                      "companyName", "department", "businessPhones", "mobilePhone", "officeLocation",
                      "streetAddress", "city", "state", "postalCode", "country", "preferredLanguage",
                      "mailNickname"]  # the mail alias: read only to match a provisioned user, never kept


def test_a_cookie_set_on_one_back_channel_call_is_not_sent_on_the_next():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from entra.http import TimeoutSession

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "fpc=someone-elses; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = TimeoutSession(5, trust_env=False)
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        assert session.get(url).status_code == 200 and session.get(url).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, None] and not session.cookies
