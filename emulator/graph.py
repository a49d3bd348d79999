"""Microsoft Graph: /me (with $select) and the photo, for a valid access token with User.Read."""
from __future__ import annotations

import datetime

import jwt
from flask import Blueprint, Response, jsonify, request

from . import tokens
from .answers import current
from .transport import GRAPH_PREFIX

bp = Blueprint("graph", __name__)

GRAPH_DEFAULT = ["businessPhones", "displayName", "givenName", "jobTitle", "mail",
                 "mobilePhone", "officeLocation", "preferredLanguage", "surname",
                 "userPrincipalName", "id"]
GRAPH_EXTRA = ["department", "companyName", "streetAddress", "city", "state", "postalCode",
               "country", "usageLocation", "mailNickname"]


@bp.get(GRAPH_PREFIX + "/v1.0/me")
def graph_me():
    user, error = _graph_user()
    if error:
        return error
    known = {name.lower(): name for name in GRAPH_DEFAULT + GRAPH_EXTRA}
    select = request.args.get("$select")
    if select:
        fields = []
        for item in (part.strip() for part in select.split(",")):
            if not item:
                continue
            if item.lower() not in known:
                return _graph_error(400, "Request_BadRequest",
                                    f"Could not find a property named '{item}' on type "
                                    "'microsoft.graph.user'.")
            fields.append(known[item.lower()])
        context = ("https://graph.microsoft.com/v1.0/$metadata#users("
                   + ",".join(fields) + ")/$entity")
    else:
        fields = GRAPH_DEFAULT
        context = "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    body = {"@odata.context": context}
    for name in fields:
        body[name] = (user.oid if name == "id" else user.mail_nickname if name == "mailNickname"
                      else user.profile.get(name))
    body.update(current().faults.get("graph_me") or {})
    return jsonify(body)


@bp.get(GRAPH_PREFIX + "/v1.0/me/photo/$value")
def graph_photo():
    user, error = _graph_user()
    if error:
        return error
    if not user.photo:
        return _graph_error(404, "ImageNotFound", "The photo wasn't found.")
    return Response(user.photo, content_type=user.photo_type or "image/png")


def _graph_user():
    """Return (user, None) for a valid Graph access token, else (None, error response)."""
    emu = current()
    status = emu.faults.get("graph_status")
    if status:
        return None, _graph_error(int(status), "generalException",
                                  "An emulated Graph failure occurred.")
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        return None, _graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
    raw = auth[7:].strip()
    try:
        header = jwt.get_unverified_header(raw)
        key = emu.keys.public_key(header.get("kid", ""))
        if key is None or header.get("alg") != "RS256":
            raise jwt.InvalidTokenError("unknown signing key")
        # Expiry is checked below against the emulator's clock, not the wall clock.
        claims = jwt.decode(raw, key, algorithms=["RS256"], audience=tokens.GRAPH_AUDIENCE,
                            options={"verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False, "require": ["exp", "oid"]})
    except jwt.InvalidTokenError:
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Access token validation failure. Invalid audience or "
                                  "signature.")
    if claims["exp"] < emu.now():
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Lifetime validation failed, the token is expired.")
    if "user.read" not in claims.get("scp", "").lower().split():
        return None, _graph_error(401, "InvalidAuthenticationToken",
                                  "Access token does not carry the User.Read scope.")
    user = emu.directory.user_by_oid(claims["oid"])
    if user is None:
        return None, _graph_error(404, "Request_ResourceNotFound",
                                  f"Resource '{claims['oid']}' does not exist.")
    return user, None


def _graph_error(status: int, code: str, message: str):
    stamp = datetime.datetime.fromtimestamp(current().now(), datetime.timezone.utc)
    return jsonify(error={"code": code, "message": message, "innerError": {
        "date": stamp.strftime("%Y-%m-%dT%H:%M:%S"), "request-id": tokens.new_guid(),
        "client-request-id": request.headers.get("client-request-id") or tokens.new_guid()}}
    ), status
