"""Fixtures: a demo-mode portal per test (own instance folder, database and emulator state), Northwind with SSO
active (`active`), the production lane's portal, emulator and Chromium-like browser (prod_app, prod_emulator,
prod_browser), and the emulator as its own HTTPS server (emulator_server). Plain functions are in helpers.py.

With TEST_DATABASE_URL set (a PostgreSQL URL; .ci/run sets it) each test gets a fresh schema there
instead of a SQLite file.
"""
from __future__ import annotations

import os
import sys
import uuid
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import entra
import vault
from app import create_app
from browsing import PortalBrowser
from emulator import Emulator
from helpers import (PASSWORD, PORTAL_HOST, PRODUCTION, ROOT, TEST_KEY, Processes, activate_sso, free_port, make_pki,
                     readme_commands, set_option, sign_out)
from models import db

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def _server_engine():
    engine = sa.create_engine(TEST_DATABASE_URL, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def database_uri(request, tmp_path):
    """The test's empty database: None for SQLite in the instance folder, else a new PostgreSQL schema."""
    if not TEST_DATABASE_URL:
        yield None
        return
    engine = request.getfixturevalue("_server_engine")
    schema = "t_" + uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(TEST_DATABASE_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def app_config():
    """Extra settings for the test's demo portal; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
def app(tmp_path, database_uri, app_config):
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY], **app_config}
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    yield app
    with app.app_context():
        db.engine.dispose()  # close pooled connections before the schema goes


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def emulator(app):
    return app.extensions["entra_emulator"]


@pytest.fixture
def northwind(app):
    """The Northwind organisation with a local admin (who may activate SSO)."""
    from domain import directory, passwords

    with app.app_context():
        org = directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        return org.id


@pytest.fixture
def active(app, client, northwind):
    """Northwind with SSO activated by its admin; the browser is signed out again."""
    resp = activate_sso(client)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/settings/security")
    sign_out(client)
    return northwind


@pytest.fixture
def vault_key():
    return vault.generate_key()


# -- the production lane: the configuration users deploy, driven by a browser that behaves like one ------------

@pytest.fixture
def prod_app(tmp_path, database_uri):
    """The portal as deployed: DEMO_MODE off, https SERVER_NAME, real-looking Entra settings, schema by init-db."""
    config = dict(PRODUCTION, **({"SQLALCHEMY_DATABASE_URI": database_uri} if database_uri else {}))
    instance = str(tmp_path / "prod-instance")
    setup = create_app(config, instance_path=instance)
    for args, stdin in ((["init-db"], None),
                        (["create-org", "Northwind Traders", "--domain", "northwind.example"], None),
                        (["create-admin", "admin@northwind.example", "--org", "Northwind Traders", "--password-stdin"],
                         PASSWORD + "\n")):
        result = setup.test_cli_runner().invoke(args=args, input=stdin)
        assert result.exit_code == 0, result.output
    with setup.app_context():
        db.engine.dispose()
    app = create_app(config, instance_path=instance)  # started after the schema exists, as the README says
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def prod_emulator(prod_app, tmp_path):
    """Microsoft's hosts answered by the emulator, without demo mode: on the portal's one outbound session."""
    base = "https://" + PORTAL_HOST
    emu = Emulator(str(tmp_path / "entra"), browser_url="https://login.microsoftonline.com", clients={
        PRODUCTION["ENTRA_CLIENT_ID"]: {
            "secret": PRODUCTION["ENTRA_CLIENT_SECRET"], "name": "Customer Portal",
            "redirect_uris": [base + entra.CALLBACK_PATH, base + entra.ADMIN_CONSENT_CALLBACK_PATH],
            "front_channel_logout_url": base + entra.FRONT_CHANNEL_LOGOUT_PATH}})
    emu.mount(entra.get_http(prod_app))
    return emu


@pytest.fixture
def prod_browser(prod_app, prod_emulator):
    """A Chromium-like browser that reaches the portal and Microsoft's sign-in host by name."""
    return PortalBrowser({PORTAL_HOST: prod_app, "login.microsoftonline.com": prod_emulator.wsgi},
                         "https://" + PORTAL_HOST)


# -- the emulator as its own server (README "Staging with the emulator") ---------------------------------------

@pytest.fixture
def emulator_server(tmp_path):
    """The README's `python -m emulator` command on a free port, with a certificate from a CA of the test's own
    (`pki`: make_pki's files) and PRODUCTION's client; `url` is its base URL, `procs` holds its log."""
    pki = make_pki(tmp_path)
    port, procs = free_port(), Processes(tmp_path)
    client = {"FLASK_ENTRA_CLIENT_ID": PRODUCTION["ENTRA_CLIENT_ID"],
              "FLASK_ENTRA_CLIENT_SECRET": PRODUCTION["ENTRA_CLIENT_SECRET"]}
    [command] = readme_commands("emulator", client)
    assert command[:3] == ["python", "-m", "emulator"]
    command = [sys.executable] + command[1:] + ["--instance", str(tmp_path / "emulator")]
    for option, value in (("--port", str(port)), ("--cert", pki["emulator"]), ("--key", pki["emulator_key"])):
        command = set_option(command, option, value)
    procs.start("emulator", command, cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    try:
        procs.wait_for_port("emulator", port)
        yield SimpleNamespace(url=f"https://127.0.0.1:{port}", pki=pki, procs=procs,
                              client_id=client["FLASK_ENTRA_CLIENT_ID"],
                              client_secret=client["FLASK_ENTRA_CLIENT_SECRET"])
    finally:
        procs.stop()


# -- user provisioning (SCIM) -----------------------------------------------------------------------------------

@pytest.fixture
def scim(app, client, active):
    """Northwind (SSO active) with a provisioning token: a client that calls /scim/v2/ as Entra does."""
    from domain import provisioning
    from domain.policy import OPERATOR
    from models import Organization
    from scim_client import ScimClient

    with app.app_context():
        token = provisioning.generate_token(db.session.get(Organization, active), OPERATOR)
    return ScimClient(app.test_client(), token)
