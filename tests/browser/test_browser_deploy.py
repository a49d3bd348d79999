"""The README's deployment, run as written: Chromium → nginx (TLS) → gunicorn → portal → the emulator over HTTPS.

The gunicorn command, the environment, the nginx server block and the emulator's start command are the blocks of
README.md marked `<!-- deploy-test: NAME -->`; only ports, certificate paths, secrets and the database are the
test's own. Runs once per CI run (marker `deploy`): it uses its own SQLite file whatever TEST_DATABASE_URL says.
"""
from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
import vault

from helpers import PRODUCTION, Processes, free_port, make_pki, readme_block, readme_commands, readme_env
from tests.browser.live import CHROMIUM, CHROMIUM_FLAGS, ROOT
from tests.browser.steps import Walk

pytestmark = pytest.mark.deploy

NGINX = "/usr/sbin/nginx"
PORTAL = "portal.example.com"  # the README's host; Chromium maps it to nginx on 127.0.0.1
BIN = os.path.dirname(sys.executable)  # the venv's gunicorn and flask
ADMIN, MEMBER = "admin@northwind.example", "lena.fischer@northwind.example"
ADMIN_PASSWORD = "correct horse battery staple 42"
# The README's environment leaves these to the operator ("..."): the test fills exactly these.
FILLED = {"FLASK_SECRET_KEY", "FLASK_ENCRYPTION_KEYS", "FLASK_ENTRA_CLIENT_ID", "FLASK_ENTRA_CLIENT_SECRET",
          "FLASK_SQLALCHEMY_DATABASE_URI"}


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it in .ci/run; the deployment test must not be skipped there)")
    pytest.skip(what)


# -- the README's blocks ------------------------------------------------------------------------------

def _sub(pattern: str, replacement: str, text: str) -> str:
    """re.sub that insists on a match: a README edit that moves a port or path must fail here, not go unnoticed."""
    text, count = re.subn(pattern, lambda m: m.expand(replacement), text)
    assert count, f"the README's block no longer has {pattern!r}"
    return text


def nginx_conf(prefix, server_block: str) -> str:
    """A main nginx.conf around the README's server block: no root paths, everything under `prefix`."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would otherwise run as nobody
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp}\n{server_block}\n}}\n")


# -- the test -----------------------------------------------------------------------------------------

@pytest.fixture
def deployment(tmp_path, emulator_server):
    """The README's deployment on free loopback ports; yields what the browser needs."""
    if not os.path.exists(NGINX):
        _missing(f"no nginx at {NGINX}: apt-get install nginx")
    if not os.path.exists(CHROMIUM):
        _missing(f"no browser at {CHROMIUM}: apt-get install chromium")
    pki, emu_url = emulator_server.pki, emulator_server.url
    app_port, https_port, http_port = free_port(), free_port(), free_port()

    # The README's environment, the test's secrets filled in, plus the staging block pointed at the emulator.
    readme = readme_env("environment")
    assert {k for k, v in readme.items() if v == "..."} == FILLED, "the README's environment changed its blanks"
    env = {**readme,
           "FLASK_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(36)).decode(),
           "FLASK_ENCRYPTION_KEYS": vault.generate_key(),
           "FLASK_ENTRA_CLIENT_ID": emulator_server.client_id,
           "FLASK_ENTRA_CLIENT_SECRET": emulator_server.client_secret,
           "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/portal.sqlite"}
    staging = readme_env("staging-environment")
    assert staging.keys() == {"FLASK_ENTRA_AUTHORITY", "FLASK_GRAPH_ENDPOINT", "FLASK_ENTRA_CA_BUNDLE"}
    for key, value in staging.items():
        env[key] = pki["ca"] if key == "FLASK_ENTRA_CA_BUNDLE" else _sub(r"^https://127\.0\.0\.1:8443\b", emu_url, value)
    env.update(PATH=os.environ["PATH"], HOME=str(tmp_path), LANG="C.UTF-8")

    procs = Processes(tmp_path)
    try:
        def flask(*args: str, stdin: str = "") -> None:
            result = subprocess.run([f"{BIN}/flask", *args], cwd=ROOT, env=env, input=stdin, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, f"flask {' '.join(args)}:\n{result.stdout}{result.stderr}"

        for command in readme_commands("migrate", env):
            assert command[0] == "flask"
            flask(*command[1:])
        flask("--app", "app", "create-org", "Northwind Traders", "--domain", "northwind.example")
        flask("--app", "app", "create-admin", ADMIN, "--org", "Northwind Traders", "--password-stdin",
              stdin=ADMIN_PASSWORD + "\n")

        [gunicorn] = readme_commands("gunicorn", env)
        assert gunicorn[0] == "gunicorn" and "127.0.0.1:8000" in gunicorn
        gunicorn = [f"{BIN}/gunicorn"] + [a.replace("127.0.0.1:8000", f"127.0.0.1:{app_port}") for a in gunicorn[1:]]
        procs.start("gunicorn", gunicorn, cwd=ROOT, env=env)

        block = readme_block("nginx")
        block = _sub(r"\blisten 443\b", f"listen 127.0.0.1:{https_port}", block)
        block = _sub(r"\blisten 80\b", f"listen 127.0.0.1:{http_port}", block)
        block = _sub(r"(\bssl_certificate\s+)\S+;", rf"\g<1>{pki['portal']};", block)
        block = _sub(r"(\bssl_certificate_key\s+)\S+;", rf"\g<1>{pki['portal_key']};", block)
        block = _sub(r"http://127\.0\.0\.1:8000\b", f"http://127.0.0.1:{app_port}", block)
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        (nginx_dir / "nginx.conf").write_text(nginx_conf(nginx_dir, block))
        procs.start("nginx", [NGINX, "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
                              "-e", str(nginx_dir / "error.log")])

        procs.wait_for_port("gunicorn", app_port)
        procs.wait_for_port("nginx", https_port)
        yield {"https_port": https_port, "http_port": http_port, "emulator": emu_url, "pki": pki,
               "procs": procs, "env": env}
    finally:
        procs.stop()


class Deployed:
    """What a Walk needs to know about the portal: its public URL and where Microsoft's pages are."""

    def __init__(self, emulator_url: str) -> None:
        self.microsoft_url = emulator_url + "/"

    def url(self, path: str = "/") -> str:
        return f"https://{PORTAL}{path}"


def test_the_readme_deployment_signs_in_through_nginx_over_https(deployment, playwright):
    d = deployment
    logs = lambda: "\n".join(f"== {n}\n{d['procs'].log(n)[-4000:]}" for n in ("gunicorn", "emulator", "nginx"))

    # nginx's plain-HTTP server sends browsers to HTTPS.
    http = requests.get(f"http://127.0.0.1:{d['http_port']}/profile/", headers={"Host": PORTAL},
                        allow_redirects=False, timeout=10)
    assert (http.status_code, http.headers["Location"]) == (301, f"https://{PORTAL}/profile/")

    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=CHROMIUM_FLAGS + [f"--host-resolver-rules=MAP {PORTAL}:443 127.0.0.1:{d['https_port']}",
                               f"--ignore-certificate-errors-spki-list={d['pki']['spki']}"])
    try:
        context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 800})
        walk = Walk(context.new_page(), Deployed(d["emulator"]))
        try:
            # An admin signs in with a password and activates SSO at the emulated Microsoft, over HTTPS.
            walk.sign_in_locally(ADMIN, ADMIN_PASSWORD)
            response = walk.page.goto(walk.portal.url("/"))
            # One HSTS policy, the portal's (Playwright joins repeated headers with a newline).
            assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["__Host-portal_session"]["secure"], cookies
            walk.open_security().activate_sso(ADMIN, on_behalf=False)
            walk.at("Settings", "security-active")
            assert walk.page.url == walk.portal.url("/settings/security")
            assert "Status: Active" in walk.page.inner_text("main"), walk.page.inner_text("main")
            walk.sign_out()
            assert walk.page.url.startswith(walk.portal.url("/login"))
            assert "You are signed out." in walk.flash()

            # A member signs in with Microsoft (consent explanation, the emulator's pages), then signs out.
            walk.sso_sign_in(MEMBER).at("Welcome", "home")
            assert "Signed in with Microsoft." in walk.flash()
            walk.click("Profile", role="link").at("Your profile", "profile")
            assert MEMBER in walk.page.inner_text("main")
            walk.sign_out()
            assert "You are signed out." in walk.flash()
            walk.goto("/profile/").at("Sign in", "login")
        except Exception as e:
            raise AssertionError(f"{e}\nat {walk.page.url}\n{logs()}") from e
    finally:
        browser.close()

    # No server error anywhere on the way.
    access = d["procs"].log("gunicorn")
    assert " 500 " not in access and "Traceback" not in access, logs()


# -- the portal's outbound calls on real sockets (the emulator over HTTPS, no browser needed) ------------------

def _entra(tmp_path, url: str, **config):
    from app import create_app

    app = create_app({"SERVER_NAME": PORTAL, "SECRET_KEY": "s" * 48, "ENCRYPTION_KEYS": [vault.generate_key()],
                      "ENTRA_CLIENT_ID": PRODUCTION["ENTRA_CLIENT_ID"],
                      "ENTRA_CLIENT_SECRET": PRODUCTION["ENTRA_CLIENT_SECRET"],
                      "ENTRA_AUTHORITY": url + "/organizations", "GRAPH_ENDPOINT": url + "/graph/v1.0", **config},
                     instance_path=str(tmp_path / f"instance-{uuid.uuid4().hex[:8]}"))
    return app, app.extensions["entra"]


def test_outbound_calls_trust_exactly_the_ca_bundle(emulator_server, tmp_path):
    from entra import EntraError

    url, pki = emulator_server.url, emulator_server.pki
    app, client = _entra(tmp_path, url, ENTRA_CA_BUNDLE=pki["ca"])
    with app.app_context():
        # The discovery check passes on the emulator's own URLs, and MSAL asks nobody else about the authority.
        assert client.discovery()["issuer"] == url + "/{tenantid}/v2.0"
        flow, auth_uri = client.start_sign_in(login_hint=None, domain_hint=None)
        assert auth_uri.startswith(url + "/organizations/oauth2/v2.0/authorize?")
        assert client.admin_consent_url("organizations", "s").startswith(url + "/organizations/v2.0/adminconsent?")

    other = tmp_path / "other"
    other.mkdir()
    for label, bundle in (("the system's CAs", None), ("another CA", make_pki(other)["ca"])):
        app, client = _entra(tmp_path, url, ENTRA_CA_BUNDLE=bundle)
        with app.app_context(), pytest.raises(EntraError) as refused:
            client.discovery()
        assert (refused.value.reason, refused.value.status) == ("upstream_unreachable", 502), label


def test_a_silent_authority_times_out_after_entra_timeout(tmp_path):
    from entra import EntraError

    pki = make_pki(tmp_path)
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        app, client = _entra(tmp_path, f"https://127.0.0.1:{silent.getsockname()[1]}",
                             ENTRA_CA_BUNDLE=pki["ca"], ENTRA_TIMEOUT=0.5)
        started = time.monotonic()
        with app.app_context(), pytest.raises(EntraError) as refused:
            client.discovery()
        assert (refused.value.reason, refused.value.status) == ("upstream_timeout", 504)
        assert time.monotonic() - started < 5


def test_a_missing_ca_bundle_stops_start_up(tmp_path):
    from app import ConfigError

    with pytest.raises(ConfigError, match="ENTRA_CA_BUNDLE is not a file"):
        _entra(tmp_path, "https://127.0.0.1:9", ENTRA_CA_BUNDLE=str(tmp_path / "nowhere.pem"))
