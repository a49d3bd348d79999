"""Strict settings, demo mode on loopback only, and a CLI that works (and fails in one line) before configuration."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests

import entra
import vault
from app import ConfigError, create_app
from helpers import PRODUCTION, ROOT, TEST_KEY, free_port, readme_env
from models import db

# `flask --app app ARGS` exactly, except that the instance folder is the test's (flask's own group and loader).
FLASK = ("import sys; from flask.cli import FlaskGroup; from app import create_app; "
         "FlaskGroup(create_app=lambda: create_app(instance_path=sys.argv[1])).main(sys.argv[2:], prog_name='flask')")


def flask(tmp_path, *args: str, env: dict | None = None, stdin: str = "", timeout: float = 60):
    """Run the real CLI in a fresh process with only the given FLASK_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    return subprocess.run([sys.executable, "-c", FLASK, str(tmp_path / "instance"), *args], cwd=ROOT,
                          env={**clean, **(env or {})}, input=stdin, capture_output=True, text=True, timeout=timeout)


def settings(database_uri=None, **more) -> dict:
    """PRODUCTION as the FLASK_* environment, plus `more`."""
    env = {f"FLASK_{key}": value for key, value in PRODUCTION.items() if key != "ENCRYPTION_KEYS"}
    env["FLASK_ENCRYPTION_KEYS"] = TEST_KEY
    if database_uri:
        env["FLASK_SQLALCHEMY_DATABASE_URI"] = database_uri
    return {**env, **more}


def one_error_line(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- strict settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["DEBUG", "DEMO_MODE", "RATELIMIT_ENABLED", "TESTING", "SESSION_COOKIE_SECURE"])
@pytest.mark.parametrize("value", ["False", "no", "off", "yes", "2"])
def test_a_boolean_from_the_environment_must_be_a_real_boolean(tmp_path, monkeypatch, key, value):
    monkeypatch.setenv(f"FLASK_{key}", value)
    with pytest.raises(ConfigError) as e:
        create_app(PRODUCTION, instance_path=str(tmp_path))
    assert str(e.value).startswith(f"{key} must be true or false") and "\n" not in str(e.value)


def test_a_boolean_string_in_instance_config_is_refused(tmp_path):
    (tmp_path / "config.py").write_text('DEBUG = "False"\n')
    with pytest.raises(ConfigError, match="^DEBUG must be true or false"):
        create_app(PRODUCTION, instance_path=str(tmp_path))


@pytest.mark.parametrize("value, debug", [("false", False), ("0", False), ("true", True), ("1", True)])
def test_json_booleans_and_1_0_are_accepted(tmp_path, monkeypatch, value, debug):
    monkeypatch.setenv("FLASK_DEBUG", value)
    assert create_app(PRODUCTION, instance_path=str(tmp_path)).debug is debug


def test_debug_relaxes_no_secret_key_cookie_or_hsts(tmp_path, monkeypatch):
    (tmp_path / "secret_key").write_text("k" * 48)  # as an earlier demo run leaves it
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({**PRODUCTION, "SECRET_KEY": None, "DEBUG": True}, instance_path=str(tmp_path))
    app = create_app({**PRODUCTION, "DEBUG": True}, instance_path=str(tmp_path))
    assert app.debug is True
    resp = app.test_client().get("/login", base_url="https://portal.example.com")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-portal_session=") and "Secure" in cookie


def test_numbers_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASK_ENTRA_TIMEOUT", "ten")
    with pytest.raises(ConfigError, match="^ENTRA_TIMEOUT must be a number"):
        create_app(PRODUCTION, instance_path=str(tmp_path))


# -- demo mode on this computer only --------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "portal.example.com"])
def test_demo_refuses_a_public_host(runner, host):
    result = runner.invoke(args=["demo", "--host", host, "--no-serve"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: The demo serves only this computer")
    assert "any account on the emulated Microsoft page" in result.output and "password is in the README" in result.output


@pytest.mark.parametrize("path", ["/login", "/healthz", "/_entra/organizations/oauth2/v2.0/authorize"])
@pytest.mark.parametrize("address", ["203.0.113.9", "10.0.0.2", "::ffff:192.0.2.1", ""])
def test_demo_app_refuses_requests_from_other_computers(client, path, address):
    resp = client.get(path, environ_base={"REMOTE_ADDR": address})
    assert resp.status_code == 403
    text = resp.get_data(as_text=True)
    assert "answers only on this computer" in text and "any account on the emulated Microsoft page" in text


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_demo_app_answers_loopback(client, address):
    assert client.get("/login", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_demo_app_checks_the_socket_peer_not_what_a_proxy_claims(tmp_path):
    app = create_app({"DEMO_MODE": True, "ENCRYPTION_KEYS": [TEST_KEY], "PROXY_FIX_X_FOR": 1},
                     instance_path=str(tmp_path))
    client = app.test_client()
    assert client.get("/login", headers={"X-Forwarded-For": "127.0.0.1"},
                      environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 403


def test_production_app_serves_other_computers(tmp_path):
    client = create_app(PRODUCTION, instance_path=str(tmp_path)).test_client()
    resp = client.get("/login", base_url="https://portal.example.com", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert resp.status_code == 200


class HttpBrowser:
    """The few test-client calls the helpers make, over real HTTP to a server in another process."""

    class Response:
        def __init__(self, r: requests.Response):
            self.status_code, self.data, self.headers = r.status_code, r.content, r.headers
            self.request = r.request

    def __init__(self, base: str):
        self.base, self.http, self.visited_microsoft = base, requests.Session(), ""

    def _url(self, url: str) -> str:
        if "/_entra/" in url and "redirect_uri=" in url:
            self.visited_microsoft = url
        return url if url.startswith("http") else self.base + url

    def get(self, url, query_string=None, follow_redirects=False):
        return self.Response(self.http.get(self._url(url), params=query_string, allow_redirects=follow_redirects,
                                           timeout=10))

    def post(self, url, data=None, follow_redirects=False):
        return self.Response(self.http.post(self._url(url), data=data, allow_redirects=follow_redirects,
                                            timeout=10))


def test_demo_on_another_port_works_end_to_end(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    server = subprocess.Popen([sys.executable, "-c", FLASK, str(tmp_path / "instance"), "demo", "--port", str(port)],
                              cwd=ROOT, env={**clean, "FLASK_DEMO_MODE": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        browser = HttpBrowser(base)
        for _ in range(300):
            try:
                browser.get("/login")
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        from demo import DEMO_PASSWORD
        from helpers import activate_sso

        # Local sign-in, Activate SSO, the emulated Microsoft pages on this port, and back to the callback.
        back = activate_sso(browser, admin="admin@northwind.example", password=DEMO_PASSWORD)
        assert back.status_code == 303, back.data[:300]
        assert f"redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fauth%2Fcallback" in browser.visited_microsoft
        security = browser.get("/settings/security")
        assert b"Active" in security.data and b"6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f" in security.data
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the CLI before and without a complete configuration ------------------------------------------

def test_help_generate_key_and_check_config_work_before_configuration(tmp_path):
    result = flask(tmp_path, "--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for name in ("check-config", "generate-key", "create-org", "create-admin", "rotate-keys", "demo", "db"):
        assert f"\n  {name} " in result.stdout
    assert flask(tmp_path, "create-org", "--help").returncode == 0
    key = flask(tmp_path, "generate-key")
    assert key.returncode == 0 and len(vault.parse_keys(key.stdout.strip())) == 1

    check = flask(tmp_path, "check-config", env={"FLASK_DEMO_MODE": "yes", "FLASK_SECRET_KEY": "changeme",
                                                 "FLASK_ENTRA_TIMEOUT": "-1"})
    problems = [line for line in check.stdout.splitlines() if line.startswith("Problem: ")]
    assert [p.split()[1] for p in problems] == ["DEMO_MODE", "ENTRA_TIMEOUT", "SECRET_KEY", "Missing", "ENCRYPTION_KEYS"]
    assert "ENTRA_CLIENT_ID, ENTRA_CLIENT_SECRET, SERVER_NAME" in problems[3]
    assert one_error_line(check) == "Error: 5 problem(s) with the settings; fix them and run check-config again."

    # Every other command: the first problem on one line, pointing at check-config for the rest.
    line = one_error_line(flask(tmp_path, "create-org", "Acme", "--domain", "acme.example"))
    assert line.startswith("Error: SECRET_KEY is missing") and "(2 more: run `flask --app app check-config`" in line
    assert not (tmp_path / "instance" / "portal.sqlite").exists()


def test_create_org_before_db_upgrade_then_after(tmp_path, database_uri):
    env = settings(database_uri)
    line = one_error_line(flask(tmp_path, "create-org", "Acme", "--domain", "acme.example", env=env))
    assert line == ("Error: The database's tables are missing or older than this portal: run `flask --app app db "
                    "upgrade` first.")
    assert flask(tmp_path, "db", "upgrade", env=env).returncode == 0
    result = flask(tmp_path, "create-org", "Acme", "--domain", "acme.example", env=env)
    assert result.returncode == 0 and "Created organisation Acme" in result.stdout

    # The data's key is gone: one line naming the key id to restore, for any command.
    other = settings(database_uri, FLASK_ENCRYPTION_KEYS=vault.generate_key())
    for args in (["audit", "--org", "Acme"], ["rotate-keys"]):
        line = one_error_line(flask(tmp_path, *args, env=other))
        assert line.startswith("Error: Encryption keys: the configured ENCRYPTION_KEYS cannot decrypt data written "
                               "with key id") and "restore it" in line
    line = one_error_line(flask(tmp_path, "audit", "--org", "Acme", env={**env, "FLASK_ENCRYPTION_KEYS": "bad"}))
    assert line.startswith("Error: Encryption keys: key #1 decodes to 2 bytes, expected 32")


@pytest.mark.parametrize("args", [["create-org", "Acme", "--domain", "acme.example"], ["db", "upgrade"], ["run"]])
def test_a_database_that_cannot_be_reached_is_one_line(tmp_path, args):
    port = free_port()  # nothing listens there
    env = settings(f"postgresql+psycopg://portal:hunter2-secret@127.0.0.1:{port}/portal")
    result = flask(tmp_path, *args, env=env)
    line = one_error_line(result)
    assert line.startswith("Error: The database cannot be reached (") and "SQLALCHEMY_DATABASE_URI" in line
    assert "hunter2" not in result.stderr + result.stdout


def test_a_bad_database_url_is_one_line_without_its_password(tmp_path):
    result = flask(tmp_path, "audit", "--org", "Acme", env=settings("postgres//portal:hunter2-secret@db/portal"))
    assert one_error_line(result).startswith("Error: SQLALCHEMY_DATABASE_URI is not a database URL")
    assert "hunter2" not in result.stderr


def test_a_bad_setting_is_one_line_for_every_command(tmp_path):
    for args in (["audit", "--org", "Acme"], ["db", "upgrade"], ["run"]):
        line = one_error_line(flask(tmp_path, *args, env=settings(FLASK_RATELIMIT_ENABLED="off")))
        assert line.startswith("Error: RATELIMIT_ENABLED must be true or false"), args


# -- check-config against the emulator and a wrong authority --------------------------------------

def test_check_config_in_demo_mode_reads_the_emulators_discovery(runner):
    result = runner.invoke(args=["check-config"])
    assert result.exit_code == 0, result.output
    assert ("names the expected issuer https://login.microsoftonline.com/{tenantid}/v2.0" in result.output)
    assert "\n  http://portal.test/auth/callback\n  http://portal.test/auth/admin-consent/callback\n" in result.output
    assert result.output.endswith("\nFront-channel logout URL: http://portal.test/auth/front-channel-logout\n")


def _production_app(tmp_path, *, upgrade: bool = True, **config):
    """A production configuration whose Microsoft is the emulator, mounted on the portal's session as tests do."""
    from emulator import Emulator

    app = create_app({**PRODUCTION, **config}, instance_path=str(tmp_path / "instance"))
    emulator = Emulator(str(tmp_path / "emulator"), browser_url="https://login.microsoftonline.com", clients={})
    emulator.mount(entra.get_http(app))
    if upgrade:
        assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
    return app


def test_check_config_in_production_against_the_emulator(tmp_path, database_uri):
    app = _production_app(tmp_path, upgrade=False, SQLALCHEMY_DATABASE_URI=database_uri)
    result = app.test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 1 and result.output == (
        "Error: The database's tables are missing or older than this portal: run `flask --app app db upgrade`, "
        "then check-config again.\n")
    assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
    result = app.test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1:] == ["Register these redirect URIs (platform: Web) in the app registration:",
                         "  https://portal.example.com/auth/callback",
                         "  https://portal.example.com/auth/admin-consent/callback",
                         "Front-channel logout URL: https://portal.example.com/auth/front-channel-logout"]
    with app.app_context():
        db.engine.dispose()  # before the test's schema goes


def test_check_config_refuses_an_authority_that_does_not_answer(tmp_path):
    port = free_port()
    app = _production_app(tmp_path, ENTRA_AUTHORITY=f"https://127.0.0.1:{port}/organizations", ENTRA_TIMEOUT=3)
    result = app.test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"Error: https://127.0.0.1:{port}/organizations/v2.0/.well-known/openid-"
                                    "configuration could not be reached (ConnectionError). Check ENTRA_AUTHORITY")


def test_check_config_refuses_an_authority_naming_another_issuer(tmp_path):
    from emulator.transport import EmulatorAdapter

    app = _production_app(tmp_path, ENTRA_AUTHORITY="https://login.impostor.example/organizations")
    http = entra.get_http(app)
    microsoft = http.get_adapter("https://login.microsoftonline.com/")

    class Relay(requests.adapters.BaseAdapter):
        """An authority that serves Microsoft's discovery document as its own."""

        def send(self, request, **kwargs):
            request.url = request.url.replace("login.impostor.example", "login.microsoftonline.com")
            return microsoft.send(request, **kwargs)

        def close(self):
            pass

    assert isinstance(microsoft, EmulatorAdapter)
    http.mount("https://login.impostor.example/", Relay())
    result = app.test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output == ("Error: https://login.impostor.example/organizations/v2.0/.well-known/openid-configuration"
                             " names the issuer https://login.microsoftonline.com/{tenantid}/v2.0, not "
                             "https://login.impostor.example/{tenantid}/v2.0. Check ENTRA_AUTHORITY "
                             "(https://login.impostor.example/organizations).\n")


def test_config_example_lists_every_setting_with_its_default():
    import configuration

    path = os.path.join(ROOT, "instance", "config.example.py")
    lines = open(path, encoding="utf-8").read().splitlines()
    settings_text = "\n".join(line[2:] for line in lines if re.match(r"# [A-Z_]+ = ", line))
    example: dict = {}
    exec(settings_text, {}, example)
    defaults = configuration.defaults()
    assert set(defaults) | {"SERVER_NAME", "TRUSTED_HOSTS", "DEBUG"} <= set(example)
    assert {k: example[k] for k in defaults} == defaults


def test_check_config_with_the_real_cli_and_an_authority_that_does_not_answer(tmp_path):
    port = free_port()
    env = settings(FLASK_ENTRA_AUTHORITY=f"https://127.0.0.1:{port}/organizations", FLASK_ENTRA_TIMEOUT="3")
    assert flask(tmp_path, "db", "upgrade", env=env).returncode == 0
    result = flask(tmp_path, "check-config", env=env)
    assert one_error_line(result) == (f"Error: https://127.0.0.1:{port}/organizations/v2.0/.well-known/openid-"
                                      "configuration could not be reached (ConnectionError). Check ENTRA_AUTHORITY "
                                      f"(https://127.0.0.1:{port}/organizations).")
    assert result.stdout == ""


def test_check_config_with_the_real_cli_against_the_emulator_as_its_own_server(tmp_path, database_uri, emulator_server):
    # The README's staging environment, pointed at the emulator's port and the test's CA.
    url = emulator_server.url
    staging = {key: value.replace("https://127.0.0.1:8443", url) for key, value in
               readme_env("staging-environment").items()}
    env = settings(database_uri, **{**staging, "FLASK_ENTRA_CA_BUNDLE": emulator_server.pki["ca"]})
    assert env["FLASK_ENTRA_AUTHORITY"] == url + "/organizations"
    upgrade = flask(tmp_path, "db", "upgrade", env=env)
    assert upgrade.returncode == 0, upgrade.stderr

    result = flask(tmp_path, "check-config", env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[:4] == [
        f"Settings: complete. Discovery: {url}/organizations/v2.0/.well-known/openid-configuration names the "
        f"expected issuer {url}/{{tenantid}}/v2.0.",
        "Register these redirect URIs (platform: Web) in the app registration:",
        "  https://portal.example.com/auth/callback",
        "  https://portal.example.com/auth/admin-consent/callback"]

    # A wrong authority on the same server (a mistyped tenant): exit 1, the reason on one line, nothing on stdout.
    wrong = flask(tmp_path, "check-config", env={**env, "FLASK_ENTRA_AUTHORITY": url + "/organisations"})
    assert one_error_line(wrong) == (f"Error: {url}/organisations/v2.0/.well-known/openid-configuration answered "
                                     f"HTTP 400 without an OpenID configuration. Check ENTRA_AUTHORITY "
                                     f"({url}/organisations).")
    assert wrong.stdout == ""
