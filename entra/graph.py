"""Microsoft Graph: read the signed-in user's basic profile and photo once, as cleaned data."""
from __future__ import annotations

import logging
import unicodedata
from typing import Any, Callable

import requests

from .errors import EntraError
from .http import json_or_none

log = logging.getLogger(__name__)

MAX_PHOTO = 512 * 1024
MAX_CLAIM = 256
# The basic profile we read, and nothing more (Graph leaves `id` out unless it is selected).
PROFILE_FIELDS = (
    "id", "displayName", "givenName", "surname", "mail", "userPrincipalName", "jobTitle", "companyName",
    "department", "businessPhones", "mobilePhone", "officeLocation", "streetAddress", "city", "state",
    "postalCode", "country", "preferredLanguage",
)
# Read as well, only to match the user provisioning created (Entra's default externalId); never kept or shown.
MATCH_FIELDS = ("mailNickname",)
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))

Get = Callable[..., requests.Response]  # EntraClient.get: (url, what, **kwargs), raises EntraError


def read_profile(get: Get, graph: str, access_token: str,
                 oid: str) -> tuple[dict[str, Any], bytes | None, str | None, str | None]:
    """Read /me (basic profile) and the photo once; /me must describe the token's user. Returns the profile, the
    photo and its type, and the mail alias (mailNickname, for matching only: not part of the profile)."""
    auth = {"Authorization": f"Bearer {access_token}"}
    resp = get(graph + "/me", "profile", params={"$select": ",".join(PROFILE_FIELDS + MATCH_FIELDS)}, headers=auth)
    data = json_or_none(resp)
    if not isinstance(data, dict):
        log.warning("Graph /me answered %s", resp.status_code)
        raise EntraError("graph_error", "Microsoft Graph did not return your profile.", status=502,
                         title="Your profile could not be read", hint="Try again in a minute.")
    if data.get("id") != oid:
        raise EntraError("graph_id_mismatch", "Microsoft Graph returned a profile of another user.", status=502,
                         title="Your profile could not be read")
    profile = {k: _clean(data.get(k)) for k in PROFILE_FIELDS if k != "id" and data.get(k) not in (None, "", [])}
    alias = data.get("mailNickname")
    mail_nickname = alias if isinstance(alias, str) and 0 < len(alias) <= MAX_CLAIM else None
    photo, kind = _read_photo(get, graph, auth)
    return profile, photo, kind, mail_nickname


def _read_photo(get: Get, graph: str, auth: dict[str, str]) -> tuple[bytes | None, str | None]:
    try:
        resp = get(graph + "/me/photo/$value", "photo", headers=auth)
    except EntraError:
        return None, None  # a photo is nice to have; sign-in goes on without it
    if resp.status_code != 200 or len(resp.content) > MAX_PHOTO:
        return None, None
    kind = photo_type(resp.content)
    return (resp.content, kind) if kind else (None, None)


def photo_type(data: bytes) -> str | None:
    """The image type by its signature: only JPEG and PNG are served."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def _clean(value: Any) -> Any:
    """Claims are data: strip control and bidi-override characters and cap the length."""
    if isinstance(value, list):
        return [_clean(v) for v in value[:5] if isinstance(v, str)]
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value if unicodedata.category(c) != "Cc").translate(_BIDI)
    return text[:MAX_CLAIM]
