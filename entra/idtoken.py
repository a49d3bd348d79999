"""ID-token validation (MSAL does none): the published signing keys, each with its issuer, and the claims."""
from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from typing import Any, Callable

import jwt

from .errors import EntraError
from .http import json_or_none

log = logging.getLogger(__name__)

PERSONAL_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
LEEWAY_SECONDS = 60
JWKS_REFETCHES_PER_MINUTE = 10
MAX_ID_TOKEN = 16 * 1024
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class KeySet:
    """The authority's signing keys, cached; an unknown kid refetches them (keys rotate), at most ten times a
    minute."""

    def __init__(self, fetch: Callable[[], Any]):
        self._fetch = fetch  # () -> the JWKS endpoint's answer (a requests.Response)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, its published issuer)
        self._fetched_at = 0.0
        self._refetches: deque[float] = deque()

    def _load(self) -> None:
        doc = json_or_none(self._fetch())
        entries = doc.get("keys", []) if isinstance(doc, dict) else []
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in entries if isinstance(entries, list) else []:
            try:
                issuer = entry.get("issuer")
                if (entry.get("kty") == "RSA" and entry.get("use", "sig") == "sig"
                        and (issuer is None or isinstance(issuer, str))):
                    keys[str(entry.get("kid", ""))] = (jwt.PyJWK(entry, algorithm="RS256"), issuer)
            except (jwt.PyJWTError, AttributeError, TypeError, ValueError):  # InvalidKeyError is no PyJWKError
                log.warning("Ignored an unusable key in the JWKS")
        self._keys, self._fetched_at = keys, time.monotonic()

    def key_for(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        """The published key for `kid` and the issuer it is published for."""
        with self._lock:
            if not self._fetched_at:
                self._load()
            elif kid is not None and kid not in self._keys and self._may_refetch():
                self._load()
            if kid is None:
                if len(self._keys) == 1:
                    return next(iter(self._keys.values()))
                raise invalid("no_kid")
            if kid not in self._keys:
                raise invalid("unknown_kid")
            return self._keys[kid]

    def _may_refetch(self) -> bool:
        now = time.monotonic()
        while self._refetches and now - self._refetches[0] > 60:
            self._refetches.popleft()
        if len(self._refetches) >= JWKS_REFETCHES_PER_MINUTE:
            return False
        self._refetches.append(now)
        return True


def validate(token: str, *, nonce: str, client_id: str, keys: KeySet,
             issuer: Callable[[], str]) -> dict[str, Any]:
    """Check signature (RS256, published keys only), audience, issuer, times, tenant and nonce.

    `issuer` gives the discovery document's issuer (`{tenantid}` in it stands for the token's tenant).
    """
    if len(token) > MAX_ID_TOKEN:
        raise invalid("oversized")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise invalid("malformed") from None
    if header.get("alg") != "RS256":
        raise invalid("bad_alg")
    kid = header.get("kid")
    key, key_issuer = keys.key_for(kid if isinstance(kid, str) else None)  # never keys in the header
    try:
        claims = jwt.decode(
            token, key.key, algorithms=["RS256"], audience=client_id, leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "tid", "oid"]})
    except jwt.ExpiredSignatureError:
        raise invalid("expired") from None
    except jwt.ImmatureSignatureError:
        raise invalid("not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise invalid("bad_aud") from None
    except jwt.InvalidSignatureError:
        raise invalid("bad_signature") from None
    except jwt.PyJWTError:
        raise invalid("bad_claims") from None
    tid, oid = str(claims["tid"]), str(claims["oid"])
    if not GUID.match(tid) or not GUID.match(oid):
        raise invalid("bad_ids")
    if tid == PERSONAL_TENANT:
        raise EntraError("personal_account", "Personal Microsoft accounts cannot sign in here.", status=403,
                         title="Use your work account", hint="Sign in with the account your organisation gave you.")
    if claims["iss"] != issuer().replace("{tenantid}", tid):
        raise invalid("bad_iss")
    # Microsoft's common key set says which issuer each key signs for (a personal-account key must not
    # sign a work tenant's token).
    if key_issuer is not None and claims["iss"] != key_issuer.replace("{tenantid}", tid):
        raise invalid("bad_key_issuer")
    if claims.get("ver") != "2.0":
        raise invalid("bad_ver")
    if isinstance(claims["aud"], list) and claims["aud"] != [client_id]:
        raise invalid("bad_aud")
    if "azp" in claims and claims["azp"] != client_id:
        raise invalid("bad_azp")
    expected = hashlib.sha256(nonce.encode()).hexdigest()
    if not isinstance(claims.get("nonce"), str) or claims["nonce"] != expected:
        raise invalid("bad_nonce")
    return claims


def invalid(reason: str) -> EntraError:
    log.warning("ID token rejected: %s", reason)
    return EntraError(f"id_token_{reason}", "Microsoft's answer could not be verified, so you are not signed in.",
                      status=401, title="Sign-in could not be verified",
                      hint="Start the sign-in again. If it keeps failing, tell the portal's operator.")
