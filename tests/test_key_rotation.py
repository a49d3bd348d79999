"""Keys over time: a wrong key refuses start-up, `rotate-keys` moves everything to the newest key, resumably."""
from __future__ import annotations

import base64
import sqlite3

import pytest

from domain import directory, keys, passwords, profiles
import vault
from app import create_app
from helpers import PASSWORD, activate_sso, password_sign_in, sign_out, sso_sign_in
from models import StoredProfile, User, VaultCheck, db

LENA = "lena.fischer@northwind.example"


def make_app(instance: str, keys: list[str]):
    return create_app({"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48,
                       "ENCRYPTION_KEYS": keys}, instance_path=instance)


def key_id(key: str) -> str:
    return vault.Vault([base64.urlsafe_b64decode(key)]).current_key_id


@pytest.fixture
def old_key():
    return vault.generate_key()


@pytest.fixture
def new_key():
    return vault.generate_key()


@pytest.fixture
def instance(tmp_path, old_key):
    """A portal whose data was written under `old_key`: two admins, a member, Lena's copy with photo."""
    path = str(tmp_path / "instance")
    app = make_app(path, [old_key])
    with app.app_context():
        directory.create_organization("Northwind Traders", ["northwind.example"])
        passwords.create_local_user("admin@northwind.example", "Northwind Traders", PASSWORD, role="admin")
        passwords.create_local_user("clerk@northwind.example", "Northwind Traders", PASSWORD, role="member")
    client = app.test_client()
    activate_sso(client)
    sign_out(client)
    sso_sign_in(client, LENA)
    sign_out(client)
    return path


def rows(instance: str) -> list[tuple]:
    """Every encrypted value at rest, read straight from the file."""
    conn = sqlite3.connect(f"{instance}/portal.sqlite")
    try:
        return (conn.execute("SELECT id, email_hmac, email_enc FROM users ORDER BY id").fetchall()
                + conn.execute("SELECT user_id, data_enc, photo_enc FROM stored_profiles ORDER BY user_id").fetchall()
                + conn.execute("SELECT id, value FROM vault_check").fetchall())
    finally:
        conn.close()


def key_ids_at_rest(instance: str) -> set[str]:
    return {bytes(v[1:9]).hex() for row in rows(instance) for v in row
            if isinstance(v, bytes) and len(v) > 40 and v[:1] == b"\x01"}


def everything_reads(app) -> None:
    """Through the real pages and services: passwords by email, Lena's copy and photo, her email."""
    client = app.test_client()
    assert password_sign_in(client, "clerk@northwind.example").status_code == 303
    with app.app_context():
        lena = directory.users_by_email(LENA)[0]
        copy = profiles.profile_of(lena)
        assert copy.claims["displayName"] == "Lena Fischer"
        assert profiles.photo_of(lena)[1] == "image/png"
        assert directory.user_email(lena) == LENA


# -- start-up -----------------------------------------------------------------------------------

def test_a_wrong_key_refuses_to_start_names_the_key_and_touches_nothing(instance, old_key):
    before = rows(instance)
    wrong = vault.generate_key()
    with pytest.raises(vault.KeyConfigError) as refused:
        make_app(instance, [wrong])
    message = str(refused.value)
    assert key_id(old_key) in message and key_id(wrong) in message and "restore it" in message
    assert wrong not in message and old_key not in message
    assert rows(instance) == before  # nothing rewritten, no new check value
    everything_reads(make_app(instance, [old_key]))  # the right key restores everything


def test_a_new_key_in_front_of_the_old_one_starts_and_reads_old_data(instance, old_key, new_key):
    app = make_app(instance, [new_key, old_key])
    everything_reads(app)
    assert key_ids_at_rest(instance) == {key_id(old_key)}  # reading rewrites nothing


# -- rotation -----------------------------------------------------------------------------------

def test_rotate_keys_then_the_old_key_can_be_removed(instance, old_key, new_key):
    app = make_app(instance, [new_key, old_key])
    result = app.test_cli_runner().invoke(args=["rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "users: 3 re-encrypted, 0 already under the newest key, 0 unreadable" in result.output
    assert "stored_profiles: 2 re-encrypted" in result.output and "vault_check: 1 re-encrypted" in result.output
    assert f"All personal data is under key {key_id(new_key)}" in result.output
    assert key_ids_at_rest(instance) == {key_id(new_key)}
    everything_reads(make_app(instance, [new_key]))
    with pytest.raises(vault.KeyConfigError):
        make_app(instance, [old_key])  # and the retired key alone no longer fits the data


def test_rotation_again_skips_everything(instance, old_key, new_key):
    runner = make_app(instance, [new_key, old_key]).test_cli_runner()
    assert runner.invoke(args=["rotate-keys"]).exit_code == 0
    before = rows(instance)
    result = runner.invoke(args=["rotate-keys"])
    assert result.exit_code == 0 and "users: 0 re-encrypted, 3 already under the newest key" in result.output
    assert rows(instance) == before


class Interrupted(Exception):
    pass


def test_interrupted_rotation_resumes_where_it_stopped(instance, old_key, new_key):
    app = make_app(instance, [new_key, old_key])
    done = []

    def crash_after_first_batch(n: int) -> None:
        done.append(n)
        raise Interrupted  # as if the process were killed after a commit

    with app.app_context(), pytest.raises(Interrupted):
        keys.rotate_keys(batch_size=2, progress=crash_after_first_batch)
    assert done == [2]
    assert key_ids_at_rest(instance) == {key_id(old_key), key_id(new_key)}
    # The check value moves last, so the old key cannot be dropped while data still needs it.
    with pytest.raises(vault.KeyConfigError) as refused:
        make_app(instance, [new_key])
    assert key_id(old_key) in str(refused.value)
    everything_reads(app)  # mid-rotation the portal reads both kinds of rows

    result = app.test_cli_runner().invoke(args=["rotate-keys", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "users: 1 re-encrypted, 2 already under the newest key, 0 unreadable" in result.output
    assert "stored_profiles: 2 re-encrypted" in result.output
    everything_reads(make_app(instance, [new_key]))


def test_a_row_that_cannot_be_read_is_left_alone_and_the_old_key_stays_required(instance, old_key, new_key, caplog):
    app = make_app(instance, [new_key, old_key])
    with app.app_context():
        row = db.session.execute(db.select(StoredProfile)).scalars().first()
        row.data_enc = row.data_enc[:-1] + bytes([row.data_enc[-1] ^ 1])
        db.session.commit()
        broken = (row.user_id, row.data_enc)
    result = app.test_cli_runner().invoke(args=["rotate-keys"])
    assert result.exit_code == 1
    assert "stored_profiles: 1 re-encrypted, 0 already under the newest key, 1 unreadable" in result.output
    assert "1 rows could not be decrypted" in result.output and "Keep every older key" in result.output
    assert f"stored_profiles row {broken[0]} cannot be decrypted" in caplog.text
    with app.app_context():
        assert db.session.get(StoredProfile, broken[0]).data_enc == broken[1]
        check = db.session.get(VaultCheck, 1).value
        assert vault.get_vault().key_id_of(check) == key_id(old_key)
    with pytest.raises(vault.KeyConfigError):
        make_app(instance, [new_key])


def test_rotation_recomputes_the_email_lookup_under_the_new_key(instance, old_key, new_key):
    app = make_app(instance, [new_key, old_key])
    assert app.test_cli_runner().invoke(args=["rotate-keys"]).exit_code == 0
    with app.app_context():
        clerk = directory.users_by_email("clerk@northwind.example")[0]
        assert clerk.email_hmac == vault.get_vault().blind_index("clerk@northwind.example")
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 3
