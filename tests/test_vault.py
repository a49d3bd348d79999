import base64
import hashlib
import hmac
import logging
import os
import stat

import pytest
from flask import Flask

import demo
import vault
from vault import DecryptError, KeyConfigError, Vault, aad


def raw_key(s: str) -> bytes:
    return base64.urlsafe_b64decode(s)


@pytest.fixture
def keys():
    return [vault.generate_key() for _ in range(3)]


@pytest.fixture
def v(keys):
    return Vault([raw_key(keys[0])])


def profile_aad(oid="oid-1", field="profile"):
    return aad("users", "tid-1", oid, field)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_app(tmp_path, **config) -> Flask:
    app = Flask("vault_test_app", instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


# --- keys -----------------------------------------------------------------------------------


def test_generate_key_is_44_char_urlsafe_base64_of_32_bytes():
    key = vault.generate_key()
    assert len(key) == 44
    assert key.endswith("=")
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert vault.generate_key() != key


def test_parse_keys_list_and_comma_string(keys):
    expected = [raw_key(k) for k in keys]
    assert vault.parse_keys(keys) == expected
    assert vault.parse_keys(tuple(keys)) == expected
    assert vault.parse_keys(" , ".join(keys)) == expected


def test_parse_keys_padding_optional_and_whitespace_ignored(keys):
    assert vault.parse_keys([f"  {keys[0].rstrip('=')}\n"]) == [raw_key(keys[0])]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("not*base64*at*all*but*44*characters*long*!!", "key #2 is not URL-safe base64"),
        (base64.urlsafe_b64encode(b"s3cr3t-but-only-24-bytes").decode(), "key #2 decodes to 24 bytes"),
        (base64.b64encode(b"\xfb" * 32).decode(), "key #2 is not URL-safe base64"),  # '+' '/'
        ("A" * 45, "key #2 is not valid base64"),
    ],
)
def test_parse_keys_rejects_bad_key_without_echoing_it(keys, bad, fragment):
    with pytest.raises(KeyConfigError) as exc:
        vault.parse_keys([keys[0], bad])
    message = str(exc.value)
    assert fragment in message
    assert bad not in message
    assert bad.rstrip("=")[:12] not in message


@pytest.mark.parametrize("empty", ["", "   ", [], ()])
def test_parse_keys_rejects_empty(empty):
    with pytest.raises(KeyConfigError, match="empty"):
        vault.parse_keys(empty)


def test_parse_keys_rejects_empty_entry(keys):
    with pytest.raises(KeyConfigError, match="key #2 is empty"):
        vault.parse_keys(f"{keys[0]},,{keys[1]}")


def test_parse_keys_rejects_duplicates_without_echoing(keys):
    # Same key once padded, once not: duplicates are judged on the decoded bytes.
    with pytest.raises(KeyConfigError) as exc:
        vault.parse_keys([keys[0], keys[1], keys[0].rstrip("=")])
    assert "key #3 duplicates key #1" in str(exc.value)
    assert keys[0].rstrip("=") not in str(exc.value)


def test_parse_keys_rejects_wrong_type():
    with pytest.raises(KeyConfigError, match="list or a comma-separated string"):
        vault.parse_keys(42)
    with pytest.raises(KeyConfigError, match="key #1 is not a string"):
        vault.parse_keys([b"\x00" * 32])


def test_vault_rejects_bad_raw_keys():
    with pytest.raises(KeyConfigError):
        Vault([])
    with pytest.raises(KeyConfigError, match="key #1 must be 32 raw bytes"):
        Vault([b"short"])
    with pytest.raises(KeyConfigError, match="key #2 duplicates key #1"):
        Vault([b"k" * 32, b"k" * 32])


# --- key files ------------------------------------------------------------------------------


def test_write_key_file_is_0600_and_round_trips(tmp_path, keys):
    path = tmp_path / "keys"
    vault.write_key_file(str(path), keys)
    assert mode_of(path) == 0o600
    assert vault.load_key_file(str(path)) == [raw_key(k) for k in keys]
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no temp file left behind


def test_write_key_file_is_0600_even_with_permissive_umask(tmp_path, keys):
    old = os.umask(0)
    try:
        vault.write_key_file(str(tmp_path / "keys"), keys[:1])
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "keys") == 0o600


def test_write_key_file_does_not_replace_unless_asked(tmp_path, keys):
    path = str(tmp_path / "keys")
    vault.write_key_file(path, keys[:1])
    with pytest.raises(FileExistsError):
        vault.write_key_file(path, keys[1:2])
    assert vault.load_key_file(path) == [raw_key(keys[0])]
    vault.write_key_file(path, keys[1:], replace=True)
    assert vault.load_key_file(path) == [raw_key(k) for k in keys[1:]]
    assert mode_of(path) == 0o600


def test_write_key_file_refuses_bad_keys(tmp_path):
    with pytest.raises(KeyConfigError):
        vault.write_key_file(str(tmp_path / "keys"), ["nope"])
    assert not (tmp_path / "keys").exists()


def test_load_key_file_ignores_comments_and_blank_lines(tmp_path, keys):
    path = tmp_path / "keys"
    path.write_text(
        f"# newest first\n\n{keys[0]}\n   \n  # old key, rotate out in May\n{keys[1]}  # trailing\n"
    )
    path.chmod(0o600)
    assert vault.load_key_file(str(path)) == [raw_key(keys[0]), raw_key(keys[1])]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_load_key_file_refuses_group_or_other_access(tmp_path, keys, mode):
    path = tmp_path / "keys"
    path.write_text(keys[0] + "\n")
    path.chmod(mode)
    with pytest.raises(KeyConfigError) as exc:
        vault.load_key_file(str(path))
    assert f"{mode:04o}" in str(exc.value)
    assert str(path) in str(exc.value)
    assert keys[0] not in str(exc.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_key_file_accepts_owner_only(tmp_path, keys, mode):
    path = tmp_path / "keys"
    path.write_text(keys[0] + "\n")
    path.chmod(mode)
    assert vault.load_key_file(str(path)) == [raw_key(keys[0])]


def test_load_key_file_missing(tmp_path):
    with pytest.raises(KeyConfigError, match="does not exist"):
        vault.load_key_file(str(tmp_path / "nope"))


def test_load_key_file_bad_line_names_position_not_value(tmp_path, keys):
    path = tmp_path / "keys"
    path.write_text(f"# header\n{keys[0]}\n{keys[1][:20]}\n")
    path.chmod(0o600)
    with pytest.raises(KeyConfigError) as exc:
        vault.load_key_file(str(path))
    assert "key #2" in str(exc.value) and "line 3" in str(exc.value)
    assert keys[1][:20] not in str(exc.value)


def test_load_key_file_empty(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n\n")
    path.chmod(0o600)
    with pytest.raises(KeyConfigError, match="contains no keys"):
        vault.load_key_file(str(path))


# --- aad ------------------------------------------------------------------------------------


def test_aad_is_unambiguous():
    assert aad("ab", "c") != aad("a", "bc")
    assert aad("a", "") != aad("a")
    assert aad("", "a") != aad("a", "")
    assert aad("users", "t", "o") == aad("users", "t", "o")
    assert aad(b"vault-check") == aad("vault-check")


def test_aad_refuses_other_types():
    with pytest.raises(TypeError):
        aad("users", 1)


# --- encrypt / decrypt ----------------------------------------------------------------------


def test_round_trip_bytes(v):
    for plaintext in [b"", b"x", os.urandom(20_000)]:
        assert v.decrypt(v.encrypt(plaintext, profile_aad()), profile_aad()) == plaintext


def test_round_trip_json(v):
    obj = {"displayName": "Zoë Müller", "jobTitle": None, "phones": ["+49 30 1234"], "n": 3}
    blob = v.encrypt_json(obj, profile_aad())
    assert v.decrypt_json(blob, profile_aad()) == obj
    assert "Zoë".encode() not in blob


def test_blob_format(v):
    blob = v.encrypt(b"hello", profile_aad())
    assert blob[:1] == b"\x01"
    assert blob[1:9].hex() == v.current_key_id
    assert len(blob) == 1 + 8 + 12 + len(b"hello") + 16


def test_fresh_nonce_per_encryption(v):
    a = v.encrypt(b"same", profile_aad())
    b = v.encrypt(b"same", profile_aad())
    assert a != b
    assert a[9:21] != b[9:21]


def test_blob_moved_to_another_row_fails(v):
    blob = v.encrypt_json({"mail": "a@example.com"}, profile_aad(oid="oid-1"))
    with pytest.raises(DecryptError) as exc:
        v.decrypt_json(blob, profile_aad(oid="oid-2"))
    assert v.current_key_id in str(exc.value)
    assert "a@example.com" not in str(exc.value)


def test_blob_moved_between_fields_fails(v):
    blob = v.encrypt(b"photo bytes", profile_aad(field="photo"))
    with pytest.raises(DecryptError):
        v.decrypt(blob, profile_aad(field="profile"))


@pytest.mark.parametrize(
    "index",
    [0, 1, 8, 9, 20, 21, 25, -17, -16, -1],
    ids=["version", "kid-first", "kid-last", "nonce-first", "nonce-last", "ct-first", "ct-mid",
         "ct-last", "tag-first", "tag-last"],
)
def test_tampered_byte_anywhere_fails(v, index):
    blob = bytearray(v.encrypt(b"a plaintext of some length", profile_aad()))
    blob[index] ^= 0x01
    with pytest.raises(DecryptError):
        v.decrypt(bytes(blob), profile_aad())


def test_truncated_or_extended_blob_fails(v):
    blob = v.encrypt(b"abc", profile_aad())
    for bad in [b"", blob[:20], blob[:-1], blob + b"\x00"]:
        with pytest.raises(DecryptError):
            v.decrypt(bad, profile_aad())


def test_unknown_key_id_names_it(keys):
    blob = Vault([raw_key(keys[1])]).encrypt(b"data", profile_aad())
    other = Vault([raw_key(keys[0])])
    with pytest.raises(DecryptError) as exc:
        other.decrypt(blob, profile_aad())
    assert blob[1:9].hex() in str(exc.value)
    assert "not among the configured" in str(exc.value)


def test_key_ids(keys):
    ring = Vault([raw_key(k) for k in keys])
    assert len(ring.key_ids) == 3
    assert all(len(kid) == 16 for kid in ring.key_ids)
    assert ring.current_key_id == ring.key_ids[0] == Vault([raw_key(keys[0])]).current_key_id
    assert ring.key_ids[1] == hashlib.sha256(b"key-id" + raw_key(keys[1])).digest()[:8].hex()
    assert keys[0] not in repr(ring)


def test_old_key_still_decrypts_after_new_key_prepended(keys):
    old = Vault([raw_key(keys[1])])
    blob = old.encrypt_json({"a": 1}, profile_aad())
    rotated = Vault([raw_key(keys[0]), raw_key(keys[1])])
    assert rotated.decrypt_json(blob, profile_aad()) == {"a": 1}
    assert rotated.key_id_of(blob) == old.current_key_id
    assert rotated.current_key_id != old.current_key_id


def test_is_current_and_reencrypt(keys):
    old = Vault([raw_key(keys[1])])
    rotated = Vault([raw_key(keys[0]), raw_key(keys[1])])
    blob = old.encrypt(b"payload", profile_aad())
    assert not rotated.is_current(blob)
    new_blob = rotated.reencrypt(blob, profile_aad())
    assert rotated.is_current(new_blob)
    assert rotated.key_id_of(new_blob) == rotated.current_key_id
    assert rotated.decrypt(new_blob, profile_aad()) == b"payload"
    # Once the old key is dropped, only the re-encrypted blob remains readable.
    new_only = Vault([raw_key(keys[0])])
    assert new_only.decrypt(new_blob, profile_aad()) == b"payload"
    with pytest.raises(DecryptError):
        new_only.decrypt(blob, profile_aad())


def test_reencrypt_keeps_row_binding(keys):
    rotated = Vault([raw_key(keys[0]), raw_key(keys[1])])
    blob = Vault([raw_key(keys[1])]).encrypt(b"payload", profile_aad(oid="oid-1"))
    with pytest.raises(DecryptError):
        rotated.reencrypt(blob, profile_aad(oid="oid-2"))


def test_key_id_of_malformed(v):
    with pytest.raises(DecryptError):
        v.key_id_of(b"\x01short")
    with pytest.raises(DecryptError, match="version 0x02"):
        v.key_id_of(b"\x02" + bytes(40))
    with pytest.raises(DecryptError):
        v.is_current(b"")


def test_decrypt_json_of_non_json_fails(v):
    blob = v.encrypt(b"\xff not json", profile_aad())
    with pytest.raises(DecryptError, match="not UTF-8 JSON"):
        v.decrypt_json(blob, profile_aad())


# --- blind index ----------------------------------------------------------------------------


def test_blind_index_stable_and_per_key(keys):
    a = Vault([raw_key(keys[0])])
    assert a.blind_index("alice@example.com") == Vault([raw_key(keys[0])]).blind_index(
        "alice@example.com"
    )
    assert len(a.blind_index("alice@example.com")) == 32
    assert a.blind_index("alice@example.com") != a.blind_index("bob@example.com")
    assert a.blind_index("alice@example.com") != Vault([raw_key(keys[1])]).blind_index(
        "alice@example.com"
    )


def test_blind_index_is_not_a_plain_hmac_of_the_key(keys):
    v = Vault([raw_key(keys[0])])
    plain = hmac.new(raw_key(keys[0]), b"alice", hashlib.sha256).digest()
    assert v.blind_index("alice") != plain


def test_blind_indexes_newest_first(keys):
    ring = Vault([raw_key(k) for k in keys])
    expected = [Vault([raw_key(k)]).blind_index("alice@example.com") for k in keys]
    assert ring.blind_indexes("alice@example.com") == expected
    assert ring.blind_index("alice@example.com") == expected[0]


# --- check value ----------------------------------------------------------------------------


def test_check_value_verifies_with_right_keys(keys):
    blob = Vault([raw_key(keys[1])]).check_value()
    Vault([raw_key(keys[1])]).verify_check_value(blob)
    Vault([raw_key(keys[0]), raw_key(keys[1])]).verify_check_value(blob)  # after rotation


def test_check_value_with_wrong_keys_names_key_id(keys):
    writer = Vault([raw_key(keys[0])])
    blob = writer.check_value()
    with pytest.raises(KeyConfigError) as exc:
        Vault([raw_key(keys[1]), raw_key(keys[2])]).verify_check_value(blob)
    message = str(exc.value)
    assert message.startswith(
        "the configured ENCRYPTION_KEYS cannot decrypt data written with key id "
        + writer.current_key_id
    )
    assert keys[1] not in message and keys[2] not in message


def test_check_value_is_bound_to_its_purpose(v):
    # An ordinary blob under the same key must not pass as a check value.
    with pytest.raises(KeyConfigError):
        v.verify_check_value(v.encrypt(b"vault-check-v1", profile_aad()))
    with pytest.raises(KeyConfigError, match="malformed"):
        v.verify_check_value(b"garbage")


# --- init_app -------------------------------------------------------------------------------


def test_init_app_with_config_list(tmp_path, keys):
    app = make_app(tmp_path, ENCRYPTION_KEYS=keys[:2])
    vault.init_app(app)
    assert app.extensions["vault"].key_ids == Vault([raw_key(k) for k in keys[:2]]).key_ids
    with app.app_context():
        assert vault.get_vault() is app.extensions["vault"]
    assert not os.path.exists(app.instance_path)  # nothing generated


def test_init_app_with_comma_string(tmp_path, keys):
    app = make_app(tmp_path, ENCRYPTION_KEYS=",".join(keys))
    vault.init_app(app)
    assert app.extensions["vault"].key_ids == Vault([raw_key(k) for k in keys]).key_ids


def test_init_app_with_relative_key_file(tmp_path, keys):
    app = make_app(tmp_path, ENCRYPTION_KEY_FILE="prod.keys")
    os.makedirs(app.instance_path)
    vault.write_key_file(os.path.join(app.instance_path, "prod.keys"), keys[:2])
    vault.init_app(app)
    assert app.extensions["vault"].key_ids == Vault([raw_key(k) for k in keys[:2]]).key_ids


def test_init_app_with_absolute_key_file(tmp_path, keys):
    path = tmp_path / "elsewhere.keys"
    vault.write_key_file(str(path), keys[:1])
    app = make_app(tmp_path, ENCRYPTION_KEYS="", ENCRYPTION_KEY_FILE=str(path))
    vault.init_app(app)
    assert app.extensions["vault"].current_key_id == Vault([raw_key(keys[0])]).current_key_id


def test_init_app_key_file_with_loose_mode_refused(tmp_path, keys):
    path = tmp_path / "loose.keys"
    path.write_text(keys[0] + "\n")
    path.chmod(0o644)
    app = make_app(tmp_path, ENCRYPTION_KEY_FILE=str(path), DEMO_MODE=True)
    with pytest.raises(KeyConfigError, match="0644"):
        vault.init_app(app)
    assert not os.path.exists(os.path.join(app.instance_path, "encryption.keys"))


def _demo_app(tmp_path, **config) -> Flask:
    """A bare app configured the way demo mode configures the portal's."""
    app = make_app(tmp_path, DEMO_MODE=True, SECRET_KEY=None, SERVER_NAME=None, **config)
    os.makedirs(app.instance_path, exist_ok=True)
    demo.configure(app)
    return app


def test_init_app_demo_mode_generates_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        app = _demo_app(tmp_path)
        vault.init_app(app)
    path = os.path.join(app.instance_path, "encryption.keys")
    assert mode_of(path) == 0o600
    first = app.extensions["vault"].key_ids
    assert len(first) == 1
    assert "demo" in caplog.text.lower()
    with open(path) as fh:
        content = fh.read()
    key_line = [line for line in content.splitlines() if not line.startswith("#")][0]
    assert key_line not in caplog.text  # the key is never logged

    app2 = _demo_app(tmp_path)
    vault.init_app(app2)
    assert app2.extensions["vault"].key_ids == first
    with open(path) as fh:
        assert fh.read() == content  # reused, not regenerated
    assert "encryption.keys" in os.listdir(app.instance_path)


def test_init_app_demo_mode_uses_configured_keys(tmp_path, keys):
    app = _demo_app(tmp_path, ENCRYPTION_KEYS=keys[:1])
    vault.init_app(app)
    assert app.extensions["vault"].current_key_id == Vault([raw_key(keys[0])]).current_key_id
    assert not os.path.exists(os.path.join(app.instance_path, "encryption.keys"))


@pytest.mark.parametrize("config", [{}, {"ENCRYPTION_KEYS": ""}, {"ENCRYPTION_KEYS": []},
                                    {"DEMO_MODE": False}])
def test_init_app_outside_demo_without_keys_fails(tmp_path, config):
    app = make_app(tmp_path, **config)
    with pytest.raises(KeyConfigError, match="ENCRYPTION_KEYS is not set: generate one with"):
        vault.init_app(app)
    assert "vault" not in app.extensions
    assert not os.path.exists(app.instance_path)


def test_init_app_bad_configured_key_fails(tmp_path, keys):
    app = make_app(tmp_path, ENCRYPTION_KEYS=f"{keys[0]},oops", DEMO_MODE=True)
    with pytest.raises(KeyConfigError, match="key #2"):
        vault.init_app(app)


def test_get_vault_without_init_app(tmp_path):
    app = make_app(tmp_path)
    with app.app_context(), pytest.raises(KeyConfigError, match="init_app"):
        vault.get_vault()
