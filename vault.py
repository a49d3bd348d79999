"""Encryption of personal data at rest: a key ring, row-bound AES-GCM blobs, blind indexes.

Keys never live in the database. They come from ``ENCRYPTION_KEYS`` (newest first) or a key file.

Blob format (all integers big-endian, lengths in bytes)::

    version (1) = 0x01 | key id (8) | nonce (12) | AES-256-GCM ciphertext || tag (16)

The AES-GCM associated data is ``version || key id || aad``: the caller's ``aad`` (built with
:func:`aad`) binds a blob to its row and field, and the header is bound too so it cannot be edited.

Per configured 32-byte key ``K`` (domain separation: each use gets its own subkey):

- key id      = SHA-256(b"key-id" || K)[:8]            (public; 16 hex chars in messages)
- data key    = HKDF-SHA256(K, salt=None, info=b"data")   (AES-256-GCM)
- index key   = HKDF-SHA256(K, salt=None, info=b"blind-index")   (HMAC-SHA256)

Nonces are 96 random bits per encryption, which is safe for well under 2**32 encryptions per key;
rotate keys (prepend a new one, re-encrypt) long before that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import stat
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app

__all__ = [
    "VaultError",
    "KeyConfigError",
    "DecryptError",
    "Vault",
    "generate_key",
    "parse_keys",
    "load_key_file",
    "write_key_file",
    "aad",
    "init_app",
    "get_vault",
]

KEY_SIZE = 32
VERSION = b"\x01"
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = len(VERSION) + KEY_ID_SIZE
MIN_BLOB_SIZE = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
_CHECK_MARKER = b"vault-check-v1"
# Only the URL-safe alphabet: base64.b64decode(altchars=...) would also let '+' and '/' through.
_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class VaultError(Exception):
    """Base class for every error raised by the vault."""


class KeyConfigError(VaultError):
    """Keys or key file missing or malformed; the message never contains key material."""


class DecryptError(VaultError):
    """A blob could not be decrypted; the message names the key id, never the plaintext."""


def generate_key() -> str:
    """Return a new random 32-byte key as URL-safe base64 (44 chars, padded)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_SIZE)).decode("ascii")


def _decode_key(text: Any, label: str) -> bytes:
    # `label` says where the key came from ("key #2", "key #1 in /path line 3"); the value itself
    # never goes into a message, as it may be a real key with a typo.
    if not isinstance(text, str):
        raise KeyConfigError(f"{label} is not a string")
    text = text.strip()
    if not text:
        raise KeyConfigError(f"{label} is empty")
    if not _KEY_CHARS.fullmatch(text):
        raise KeyConfigError(f"{label} is not URL-safe base64 (allowed: A-Z a-z 0-9 - _ =)")
    unpadded = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{label} is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise KeyConfigError(
            f"{label} decodes to {len(raw)} bytes, expected {KEY_SIZE}"
            " (generate one with `flask --app app generate-key`)"
        )
    return raw


def _check_unique(keys: list[bytes], labels: list[str]) -> None:
    seen: dict[bytes, str] = {}
    for key, label in zip(keys, labels):
        if key in seen:
            raise KeyConfigError(f"{label} duplicates {seen[key]}")
        seen[key] = label


def parse_keys(value: str | list[str] | tuple[str, ...]) -> list[bytes]:
    """Decode a key list (newest first); a string is comma-separated as in FLASK_ENCRYPTION_KEYS."""
    if isinstance(value, str):
        items: list[Any] = value.split(",") if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise KeyConfigError(
            "ENCRYPTION_KEYS must be a list or a comma-separated string,"
            f" not {type(value).__name__}"
        )
    if not items:
        raise KeyConfigError("ENCRYPTION_KEYS is empty: at least one key is required")
    labels = [f"key #{n}" for n in range(1, len(items) + 1)]
    keys = [_decode_key(item, label) for item, label in zip(items, labels)]
    _check_unique(keys, labels)
    return keys


def load_key_file(path: str) -> list[bytes]:
    """Read keys (one a line, newest first, '#' comments) from a file only its owner can access."""
    try:
        # O_NOFOLLOW: a symlink planted in instance/ must not redirect us; fstat on the open fd
        # checks the very file we read, not whatever the path points to a moment later.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyConfigError(f"encryption key file {path} does not exist") from None
    except OSError as exc:
        raise KeyConfigError(f"cannot open encryption key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyConfigError(f"encryption key file {path} is not a regular file")
        # POSIX permission bits mean nothing on Windows; there the ACLs are the operator's job.
        if os.name == "posix" and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise KeyConfigError(
                f"encryption key file {path} has mode {mode:04o}: it must not be readable or"
                f" writable by group or others (run `chmod 600 {path}`)"
            )
        try:
            lines = fh.read().splitlines()
        except UnicodeDecodeError:
            raise KeyConfigError(f"encryption key file {path} is not UTF-8 text") from None
    keys: list[bytes] = []
    labels: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        # '#' is not in the base64 alphabet, so a trailing comment can be cut off safely.
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        label = f"key #{len(keys) + 1} in {path} (line {lineno})"
        keys.append(_decode_key(text, label))
        labels.append(label)
    if not keys:
        raise KeyConfigError(f"encryption key file {path} contains no keys")
    _check_unique(keys, labels)
    return keys


def write_key_file(path: str, keys: list[str], *, replace: bool = False) -> None:
    """Write keys (newest first) to a new mode-0600 file; FileExistsError unless replace=True."""
    parse_keys(list(keys))  # never write a file that load_key_file would refuse
    content = (
        "# Encryption keys for personal data at rest, newest first. Keep private (mode 0600).\n"
        + "".join(f"{k.strip()}\n" for k in keys)
    ).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    # The temp file is 0600 from its first byte, so the key is never readable by others, and
    # readers only ever see a complete file (published by link/rename, never written in place).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits; this pins the mode exactly
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            # link() fails if `path` exists, so two workers starting together cannot each
            # install a different key: the loser gets FileExistsError and reads the winner's.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise  # it is an OSError too, but must not reach the fallback below
            except OSError:
                # Filesystems without hard links: fall back to an exclusive create in place.
                _write_exclusive(path, content)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _write_exclusive(path: str, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def aad(*parts: str | bytes) -> bytes:
    """Encode the place a ciphertext belongs to, e.g. aad("users", tid, oid, "profile")."""
    # Each part is length-prefixed, so ("ab", "c") and ("a", "bc") can never collide.
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            data = part.encode("utf-8")
        elif isinstance(part, (bytes, bytearray)):
            data = bytes(part)
        else:
            # Refuse ints etc.: str(1) vs "1" vs b"1" conventions would differ between callers.
            raise TypeError(f"aad parts must be str or bytes, not {type(part).__name__}")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"key-id" + key).digest()[:KEY_ID_SIZE]


def _subkey(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(key)


class Vault:
    """A key ring (newest first) that encrypts with the newest key and decrypts with any."""

    def __init__(self, keys: list[bytes]) -> None:
        keys = list(keys)
        if not keys:
            raise KeyConfigError("a Vault needs at least one key")
        for n, key in enumerate(keys, start=1):
            if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
                raise KeyConfigError(f"key #{n} must be {KEY_SIZE} raw bytes")
        _check_unique([bytes(k) for k in keys], [f"key #{n}" for n in range(1, len(keys) + 1)])
        self._ids: list[bytes] = [_key_id(bytes(k)) for k in keys]
        self._aead: dict[bytes, AESGCM] = {
            kid: AESGCM(_subkey(bytes(k), b"data")) for kid, k in zip(self._ids, keys)
        }
        self._index_keys: list[bytes] = [_subkey(bytes(k), b"blind-index") for k in keys]

    def __repr__(self) -> str:
        return f"<Vault key_ids={self.key_ids!r}>"  # ids only: safe to log

    @property
    def key_ids(self) -> list[str]:
        """Return the ids of the configured keys, newest first."""
        return [kid.hex() for kid in self._ids]

    @property
    def current_key_id(self) -> str:
        """Return the id of the newest key, the one new data is encrypted with."""
        return self._ids[0].hex()

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the newest key with a fresh nonce, bound to ``aad``."""
        header = VERSION + self._ids[0]
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead[self._ids[0]].encrypt(nonce, bytes(plaintext), header + bytes(aad))
        return header + nonce + sealed

    def _split(self, blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise DecryptError(f"blob must be bytes, not {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) < MIN_BLOB_SIZE:
            raise DecryptError(f"blob is too short ({len(blob)} bytes, at least {MIN_BLOB_SIZE})")
        if blob[:1] != VERSION:
            raise DecryptError(f"unsupported blob version 0x{blob[0]:02x}")
        kid = blob[1:HEADER_SIZE]
        nonce = blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
        return blob[:HEADER_SIZE], kid, nonce, blob[HEADER_SIZE + NONCE_SIZE :]

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob written under any configured key; DecryptError on any mismatch."""
        header, kid, nonce, sealed = self._split(blob)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptError(
                f"key id {kid.hex()} is not among the configured ENCRYPTION_KEYS"
                f" ({', '.join(self.key_ids)})"
            )
        try:
            return aead.decrypt(nonce, sealed, header + bytes(aad))
        except InvalidTag:
            raise DecryptError(
                f"cannot decrypt blob with key id {kid.hex()}: authentication failed"
                " (wrong associated data, i.e. blob moved to another row or field, or tampered)"
            ) from None

    def encrypt_json(self, obj: Any, aad: bytes) -> bytes:
        """Encrypt ``obj`` as compact UTF-8 JSON."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.encrypt(text.encode("utf-8"), aad)

    def decrypt_json(self, blob: bytes, aad: bytes) -> Any:
        """Decrypt a blob written by encrypt_json."""
        plaintext = self.decrypt(blob, aad)
        try:
            return json.loads(plaintext.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            raise DecryptError(
                f"blob with key id {self.key_id_of(blob)} decrypted but is not UTF-8 JSON"
            ) from None

    def key_id_of(self, blob: bytes) -> str:
        """Return the id of the key a blob was written with (configured or not)."""
        return self._split(blob)[1].hex()

    def is_current(self, blob: bytes) -> bool:
        """Tell whether a blob is encrypted under the newest key (no re-encryption needed)."""
        return self._split(blob)[1] == self._ids[0]

    def reencrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt with whichever key wrote the blob and encrypt again with the newest."""
        return self.encrypt(self.decrypt(blob, aad), aad)

    def blind_index(self, value: str) -> bytes:
        """Return a 32-byte HMAC of ``value`` under the newest key, for equality lookups."""
        # No normalisation here: callers normalise (e.g. trim and casefold emails) consistently.
        return hmac.new(self._index_keys[0], value.encode("utf-8"), hashlib.sha256).digest()

    def blind_indexes(self, value: str) -> list[bytes]:
        """Return the blind index under every configured key, newest first (for IN (...))."""
        data = value.encode("utf-8")
        return [hmac.new(k, data, hashlib.sha256).digest() for k in self._index_keys]

    def check_value(self) -> bytes:
        """Return a blob to store once, so start-up can prove the keys still match the data."""
        return self.encrypt(_CHECK_MARKER, _check_aad())

    def verify_check_value(self, blob: bytes) -> None:
        """Raise KeyConfigError unless the configured keys decrypt a stored check value."""
        try:
            kid = self.key_id_of(blob)
        except DecryptError as exc:
            raise KeyConfigError(f"the stored key check value is malformed: {exc}") from None
        prefix = f"the configured ENCRYPTION_KEYS cannot decrypt data written with key id {kid}"
        if kid not in self.key_ids:
            raise KeyConfigError(
                f"{prefix}: that key is not configured (configured key ids: "
                f"{', '.join(self.key_ids)}); restore it, newest first, before starting"
            )
        try:
            marker = self.decrypt(blob, _check_aad())
        except DecryptError:
            marker = b""
        if not hmac.compare_digest(marker, _CHECK_MARKER):
            raise KeyConfigError(f"{prefix}: the key with that id does not decrypt the check value")


def _check_aad() -> bytes:
    return aad(b"vault-check")


def init_app(app: Flask) -> None:
    """Store a Vault from ENCRYPTION_KEYS or ENCRYPTION_KEY_FILE (demo mode points the latter at its own file)."""
    configured = app.config.get("ENCRYPTION_KEYS")
    key_file = app.config.get("ENCRYPTION_KEY_FILE")
    if is_set(configured):
        # ENCRYPTION_KEYS wins over ENCRYPTION_KEY_FILE: the environment is the operator's override.
        keys = parse_keys(configured)
    elif key_file:
        keys = load_key_file(os.path.join(app.instance_path, os.fspath(key_file)))
    else:
        missing_keys()
    app.extensions["vault"] = Vault(keys)


def missing_keys() -> None:
    raise KeyConfigError(
        "ENCRYPTION_KEYS is not set: generate one with `flask --app app generate-key` and set"
        " FLASK_ENCRYPTION_KEYS (or ENCRYPTION_KEY_FILE to a mode-0600 file of keys)"
    )


def is_set(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):
        return bool(value)
    return True  # a wrong type is an error for parse_keys to report, not "absent"


def get_vault() -> Vault:
    """Return the current app's Vault."""
    try:
        return current_app.extensions["vault"]
    except KeyError:
        raise KeyConfigError(
            "the vault is not set up: call vault.init_app(app) in create_app"
        ) from None
