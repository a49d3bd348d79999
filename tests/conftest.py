"""Fixtures: a demo-mode portal per test (own instance folder, database and emulator state).

With TEST_DATABASE_URL set (a PostgreSQL URL; .ci/run sets it) each test gets a fresh schema there
instead of a SQLite file.
"""
from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import vault
from app import create_app
from helpers import PASSWORD, TEST_KEY
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
def app(tmp_path, database_uri):
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
              "ENCRYPTION_KEYS": [TEST_KEY]}
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
    import accounts

    with app.app_context():
        org = accounts.create_organization("Northwind Traders", ["northwind.example"])
        accounts.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        return org.id


@pytest.fixture
def vault_key():
    return vault.generate_key()
