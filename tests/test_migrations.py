"""Schema migrations: they build exactly the models' schema, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import extensions
from domain import directory
from app import create_app
from helpers import PRODUCTION
from models import db


def _head() -> str:
    return ScriptDirectory(extensions.MIGRATIONS).get_current_head()


def _revision_and_diff(app):
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        return context.get_current_revision(), compare_metadata(context, db.metadata)


@pytest.fixture
def deployment(tmp_path, database_uri):
    """A real-mode portal on an empty database, as an operator first starts it."""
    config = dict(PRODUCTION)
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    app = create_app(config, instance_path=str(tmp_path / "deploy"))
    yield app
    with app.app_context():
        db.engine.dispose()


def test_demo_start_up_migrates_an_empty_database_to_the_models(app):
    revision, diff = _revision_and_diff(app)
    assert revision == _head()
    assert diff == [], "models and migrations differ: add a migration (flask --app app db migrate)"


def test_deployment_needs_db_upgrade_and_then_works(deployment):
    runner = deployment.test_cli_runner()
    with deployment.app_context():
        assert not db.inspect(db.engine).has_table("users")  # real mode never creates tables by itself
    # The database answers, but the portal cannot work (or write) in it before the migrations: not healthy yet.
    assert deployment.test_client().get("/healthz").status_code == 503
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert deployment.test_client().get("/healthz").status_code == 200
    assert _revision_and_diff(deployment) == (_head(), [])
    assert runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"]).exit_code == 0
    again = runner.invoke(args=["init-db"])  # init-db runs the same migrations: nothing to do, data kept
    assert again.exit_code == 0 and "Database ready" in again.output
    with deployment.app_context():
        assert directory.get_organization("Tailspin").domains[0].name == "tailspin.example"


def test_downgrade_to_nothing_and_up_again(deployment):
    runner = deployment.test_cli_runner()
    assert runner.invoke(args=["init-db"]).exit_code == 0
    down = runner.invoke(args=["db", "downgrade", "base"])
    assert down.exit_code == 0, down.output
    with deployment.app_context():
        assert not db.inspect(db.engine).has_table("organizations")
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    assert _revision_and_diff(deployment) == (_head(), [])


def test_upgrade_names_organisations_whose_names_differ_only_in_case(deployment, caplog):
    runner = deployment.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade", "7c4e2b9d1a60"]).exit_code == 0  # before names ignored case
    with deployment.app_context():
        for name in ("Acme", "ACME", "Other"):
            db.session.execute(db.text("INSERT INTO organizations (name, created_at, sso_active, store_profiles, "
                                       "require_sso) VALUES (:n, CURRENT_TIMESTAMP, false, true, false)"), {"n": name})
        db.session.commit()
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    refusal = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusal) == 1 and "these do not: 'Acme' (id 1), 'ACME' (id 2). Rename" in refusal[0], refusal
    assert "Other" not in refusal[0]
    with deployment.app_context():
        db.session.execute(db.text("UPDATE organizations SET name = 'Acme East' WHERE id = 2"))
        db.session.commit()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    assert _revision_and_diff(deployment) == (_head(), [])
