"""Fixtures: a demo-mode portal per test (own instance folder, database and emulator state)."""
from __future__ import annotations

import pytest

import vault
from app import create_app
from helpers import PASSWORD, TEST_KEY


@pytest.fixture
def app(tmp_path):
    app = create_app(
        {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
         "ENCRYPTION_KEYS": [TEST_KEY]},
        instance_path=str(tmp_path / "instance"),
    )
    yield app


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
    import accounts

    with app.app_context():
        org = accounts.create_organization("Northwind Traders", ["northwind.example"])
        accounts.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        return org.id


@pytest.fixture
def vault_key():
    return vault.generate_key()
