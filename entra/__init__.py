"""The Entra ID client: MSAL's auth code flow, our own ID token validation, admin consent and Graph.

Every outbound call goes through one requests.Session with a timeout. In demo mode and in tests that
session carries the emulator's transport adapter; nothing else in this package knows about it.

client    the protocol client (MSAL, discovery, sign-in start/finish, admin consent, sign-out)
http      the one outbound session (timeout, shared deadline, CA bundle)
idtoken   ID-token validation: the JWKS cache with each key's issuer, the claims
graph     Graph /me and photo, cleaned
errors    EntraError and plain-language AADSTS explanations
"""
from __future__ import annotations

import logging
import warnings

import requests
from flask import Flask, current_app

from .client import (ADMIN_CONSENT_CALLBACK_PATH, ADMIN_CONSENT_SCOPE, CALLBACK_PATH, DISCOVERY_PATH,
                     FRONT_CHANNEL_LOGOUT_PATH, SCOPES, AdminConsent, EntraClient, SignIn, parse_admin_consent)
from .errors import EntraError, aadsts_code, explain, explain_admin_consent
from .graph import MAX_PHOTO, PROFILE_FIELDS, photo_type
from .idtoken import PERSONAL_TENANT

log = logging.getLogger(__name__)  # the parent of every module's logger here

__all__ = [
    "ADMIN_CONSENT_CALLBACK_PATH", "ADMIN_CONSENT_SCOPE", "CALLBACK_PATH", "DISCOVERY_PATH", "FRONT_CHANNEL_LOGOUT_PATH", "MAX_PHOTO",
    "PERSONAL_TENANT", "PROFILE_FIELDS", "SCOPES", "AdminConsent", "EntraClient", "EntraError", "SignIn",
    "aadsts_code", "client", "explain", "explain_admin_consent", "get_http", "init_app", "parse_admin_consent",
    "photo_type",
]


def init_app(app: Flask) -> None:
    # Query response mode keeps the callback same-site, so the Lax session cookie arrives with it.
    warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", module="msal")
    app.extensions["entra"] = EntraClient(app)


def get_http(app: Flask) -> requests.Session:
    return app.extensions["entra"].http


def client() -> EntraClient:
    return current_app.extensions["entra"]
