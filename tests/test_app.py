"""The factory: configuration layers, start-up refusals, error pages."""
from __future__ import annotations

import os

import pytest

from app import ConfigError, create_app
from helpers import PRODUCTION, TEST_KEY


def test_layers_instance_config_then_env_then_test_config(tmp_path, monkeypatch):
    inst = tmp_path / "inst"
    inst.mkdir()
    (inst / "config.py").write_text("SESSION_IDLE_MINUTES = 11\nSESSION_MAX_HOURS = 3\nENTRA_TIMEOUT = 4\n")
    monkeypatch.setenv("FLASK_SESSION_MAX_HOURS", "5")
    monkeypatch.setenv("FLASK_ENTRA_TIMEOUT", "6")
    app = create_app({**PRODUCTION, "ENTRA_TIMEOUT": 7}, instance_path=str(inst))
    assert app.config["SESSION_IDLE_MINUTES"] == 11  # instance/config.py over the default
    assert app.config["SESSION_MAX_HOURS"] == 5  # environment over instance/config.py
    assert app.config["ENTRA_TIMEOUT"] == 7  # test config over everything
    assert app.config["ENTRA_AUTHORITY"] == "https://login.microsoftonline.com/organizations"


@pytest.mark.parametrize("secret", [None, "short", "changeme"])
def test_missing_or_weak_secret_key_stops_start_up(tmp_path, secret):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({**PRODUCTION, "SECRET_KEY": secret}, instance_path=str(tmp_path))


def test_missing_entra_settings_are_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        create_app({**PRODUCTION, "ENTRA_CLIENT_ID": None, "ENTRA_CLIENT_SECRET": ""}, instance_path=str(tmp_path))
    assert "ENTRA_CLIENT_ID" in str(e.value) and "ENTRA_CLIENT_SECRET" in str(e.value)


def test_demo_mode_refuses_real_entra_settings(tmp_path):
    with pytest.raises(ConfigError, match="DEMO_MODE"):
        create_app({**PRODUCTION, "DEMO_MODE": True}, instance_path=str(tmp_path))


def test_demo_mode_keeps_one_generated_secret_key(tmp_path):
    first = create_app({"DEMO_MODE": True, "ENCRYPTION_KEYS": [TEST_KEY]}, instance_path=str(tmp_path))
    second = create_app({"DEMO_MODE": True, "ENCRYPTION_KEYS": [TEST_KEY]}, instance_path=str(tmp_path))
    assert len(first.config["SECRET_KEY"]) >= 32
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert os.stat(tmp_path / "secret_key").st_mode & 0o077 == 0


def test_real_mode_cookie_is_secure_and_host_locked(tmp_path):
    app = create_app(PRODUCTION, instance_path=str(tmp_path))
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_NAME"].startswith("__Host-")


def test_demo_banner_on_every_page(client):
    for path in ("/login", "/does-not-exist"):
        assert b"Demo mode" in client.get(path).data


@pytest.mark.parametrize("path,method,status", [
    ("/nope", "get", 404), ("/logout", "get", 405), ("/settings/security/sso/activate", "get", 405),
])
def test_error_pages_have_right_status(client, path, method, status):
    resp = getattr(client, method)(path)
    assert resp.status_code == status
    assert f"Error {status}".encode() in resp.data


def test_oversized_body_is_413_page(client):
    resp = client.post("/login", data={"email": "x" * (70 * 1024)})
    assert resp.status_code == 413
    assert b"Error 413" in resp.data


def test_healthz_reports_database(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json == {"status": "ok"}


def test_429_and_500_use_the_same_error_page(app):
    from flask import abort

    def limited():
        abort(429)

    def broken():
        raise RuntimeError("a bug with a secret inside: s3cr3t")

    app.add_url_rule("/limited-for-test", view_func=limited)
    app.add_url_rule("/broken-for-test", view_func=broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    resp = client.get("/limited-for-test")
    assert resp.status_code == 429 and b"Error 429" in resp.data
    resp = client.get("/broken-for-test")
    assert resp.status_code == 500 and b"Error 500" in resp.data
    assert b"s3cr3t" not in resp.data and b"Traceback" not in resp.data
