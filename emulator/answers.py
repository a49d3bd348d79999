"""What the emulator's endpoints share: the running Emulator, the tenant a path names, the scopes asked for and
Entra's wording of an error (AADSTS code, trace and correlation ids, time)."""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from flask import current_app

from . import tokens

if TYPE_CHECKING:
    from . import Emulator
    from .directory import Tenant

LOGIN = "https://login.microsoftonline.com"
GENERIC_TENANTS = ("organizations", "common")
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
GRAPH_RESOURCE = "https://graph.microsoft.com/"


def current() -> "Emulator":
    return current_app.extensions["entra_emulator"]


def resolve_tenant(segment: str) -> tuple[bool, "Tenant | None"]:
    """(known, tenant): generic segments are known with no tenant."""
    if segment.lower() in GENERIC_TENANTS:
        return True, None
    tenant = current().directory.tenant(segment)
    return tenant is not None, tenant


def split_scopes(scopes: list[str]) -> tuple[list[str], list[str]]:
    """Split requested scopes into Graph permissions and OpenID Connect scopes."""
    graph, oidc = [], []
    for scope in scopes:
        if scope.lower() in OIDC_SCOPES:
            oidc.append(scope.lower())
            continue
        name = scope[len(GRAPH_RESOURCE):] if scope.lower().startswith(GRAPH_RESOURCE) else scope
        name = "User.Read" if name == ".default" else name
        if name.lower() not in (g.lower() for g in graph):
            graph.append(name)
    return graph, oidc


def describe(code: int, message: str) -> tuple[str, str, str, str]:
    """Entra's error_description: code, sentence, then trace/correlation ids and time."""
    trace, correlation = tokens.new_guid(), tokens.new_guid()
    stamp = datetime.datetime.fromtimestamp(current().now(), datetime.timezone.utc)
    timestamp = stamp.strftime("%Y-%m-%d %H:%M:%SZ")
    text = (f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {timestamp}")
    return text, trace, correlation, timestamp


def tenant_not_found(segment: str) -> str:
    return (f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud.")


def client_not_found(client_id: str, directory: str) -> str:
    return (f"Application with identifier '{client_id}' was not found in the directory '{directory}'. This can "
            "happen if the application has not been installed by the administrator of the tenant or consented to "
            "by any user in the tenant. You might have sent your authentication request to the wrong tenant.")
