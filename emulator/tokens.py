"""Signing keys, JWKS and the JWTs the emulator issues."""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
import threading
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

GRAPH_AUDIENCE = "00000003-0000-0000-c000-000000000000"
# Microsoft's common key set also publishes keys for personal accounts, under the consumer tenant's issuer.
CONSUMER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_signing_key() -> tuple[str, str, str]:
    """Make a key and a self-signed certificate: (kid, private PEM, certificate PEM)."""
    key = new_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.emulator.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    kid = b64url(hashlib.sha1(der).digest())  # Entra's kid is the x5t thumbprint
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    return kid, private_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


class KeyRing:
    """The signing keys from the store, parsed once per process."""

    def __init__(self, store) -> None:
        self.store = store
        self._parsed: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._consumer: tuple[str, rsa.RSAPrivateKey, x509.Certificate] | None = None

    def _load(self, kid: str, private_pem: str, cert_pem: str) -> tuple:
        with self._lock:
            if kid not in self._parsed:
                self._parsed[kid] = (
                    serialization.load_pem_private_key(private_pem.encode(), None),
                    x509.load_pem_x509_certificate(cert_pem.encode()))
            return self._parsed[kid]

    def keys(self) -> list[tuple[str, rsa.RSAPrivateKey, x509.Certificate]]:
        """Every published key, newest (current) first; read each time so processes agree."""
        return [(row["kid"], *self._load(row["kid"], row["private_pem"], row["cert_pem"]))
                for row in self.store.signing_keys()]

    def current(self) -> tuple[str, rsa.RSAPrivateKey]:
        kid, key, _ = self.keys()[0]
        return kid, key

    def public_key(self, kid: str):
        return next((k.public_key() for k_id, k, _ in self.keys() if k_id == kid), None)

    def consumer(self) -> tuple[str, rsa.RSAPrivateKey, x509.Certificate]:
        """A key for personal accounts (made once per process, for the `consumer-key` fault)."""
        with self._lock:
            if self._consumer is None:
                kid, pem, cert = new_signing_key()
                self._consumer = (kid, serialization.load_pem_private_key(pem.encode(), None),
                                  x509.load_pem_x509_certificate(cert.encode()))
            return self._consumer

    def jwks(self, login_url: str = "https://login.microsoftonline.com", *, with_consumer: bool = False) -> dict:
        """The published keys, each with its issuer; `with_consumer` adds the personal-account key."""
        out = [_jwk(kid, key, cert, f"{login_url}/{{tenantid}}/v2.0") for kid, key, cert in self.keys()]
        if with_consumer:
            out.append(_jwk(*self.consumer(), f"{login_url}/{CONSUMER_TENANT}/v2.0"))
        return {"keys": out}


def _jwk(kid: str, key: rsa.RSAPrivateKey, cert: x509.Certificate, issuer: str) -> dict:
    numbers = key.public_key().public_numbers()
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"kty": "RSA", "use": "sig", "kid": kid, "x5t": b64url(hashlib.sha1(der).digest()),
            "n": _int_b64(numbers.n), "e": _int_b64(numbers.e), "x5c": [base64.b64encode(der).decode()],
            "issuer": issuer}


def encode_jws(header: dict, claims: dict, sign) -> str:
    """Assemble a compact JWS; `sign` maps the signing input to signature bytes."""
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    return signing_input + "." + b64url(sign(signing_input.encode("ascii")))


def rs256(key: rsa.RSAPrivateKey):
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def sign_token(ring: KeyRing, claims: dict, *, header_changes: dict | None = None,
               alg_fault: str | None = None) -> str:
    """Sign claims with the current key, bent by the test faults when given."""
    kid, key = ring.current()
    header = {"typ": "JWT", "alg": "RS256", "kid": kid}
    signer = rs256(key)
    if alg_fault == "none":
        header = {"typ": "JWT", "alg": "none"}
        signer = lambda data: b""  # noqa: E731
    elif alg_fault == "HS256-public":
        # The classic algorithm-confusion attack: HMAC keyed with the public key's PEM.
        secret = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        header["alg"] = "HS256"
        signer = lambda data: hmac.new(secret, data, hashlib.sha256).digest()  # noqa: E731
    elif alg_fault == "foreign-key":
        signer = rs256(new_rsa_key())  # right kid, wrong key
    elif alg_fault == "embedded-jwk":
        # Signed with the attacker's key, which the header offers as `jwk` (kid kept).
        foreign = new_rsa_key()
        numbers = foreign.public_key().public_numbers()
        header["jwk"] = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
        signer = rs256(foreign)
    elif alg_fault == "consumer-key":
        kid, consumer, _ = ring.consumer()  # published, but under the consumer issuer
        header["kid"] = kid
        signer = rs256(consumer)
    elif alg_fault == "unpublished-kid":
        signer = rs256(new_rsa_key())
        header["kid"] = b64url(secrets.token_bytes(20))
    elif alg_fault:
        raise ValueError(f"unknown id_token_alg fault {alg_fault!r}")
    for name, value in (header_changes or {}).items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return encode_jws(header, claims, signer)


def pairwise_sub(client_id: str, oid: str) -> str:
    """A stable per-app subject, as Entra's pairwise `sub`."""
    return b64url(hashlib.sha256(f"{client_id}:{oid}".encode()).digest())[:43]


def random_claim() -> str:
    return b64url(secrets.token_bytes(24))


def client_info(oid: str, tid: str) -> str:
    return b64url(json.dumps({"uid": oid, "utid": tid}).encode())


def new_guid() -> str:
    return str(uuid.uuid4())
