"""The protocol client: MSAL's auth code flow, discovery, admin consent and sign-out URLs, per app."""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import msal
import requests
from flask import Flask

from . import graph, idtoken
from .errors import EntraError, explain, explain_admin_consent, upstream_error
from .http import TimeoutSession, json_or_none

log = logging.getLogger(__name__)

CALLBACK_PATH = "/auth/callback"
ADMIN_CONSENT_CALLBACK_PATH = "/auth/admin-consent/callback"
FRONT_CHANNEL_LOGOUT_PATH = "/auth/front-channel-logout"  # the app registration's Front-channel logout URL
DISCOVERY_PATH = "/v2.0/.well-known/openid-configuration"  # under the authority
SCOPES = ["User.Read"]
ADMIN_CONSENT_SCOPE = "https://graph.microsoft.com/.default"
_ISSUER_PATH = re.compile(r"/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/v2\.0")


@dataclass
class SignIn:
    """What a finished sign-in yields: validated claims and the profile read once from Graph."""

    claims: dict[str, Any]
    profile: dict[str, Any]
    photo: bytes | None = None
    photo_type: str | None = None
    mail_nickname: str | None = field(default=None, repr=False)  # matching a provisioned user only; never stored
    tenant_id: str = field(init=False)
    object_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.tenant_id = self.claims["tid"]
        self.object_id = self.claims["oid"]


@dataclass(frozen=True)
class AdminConsent:
    tenant_hint: str | None
    scope: str


class _NoTokenCache(msal.TokenCache):
    """Keep no tokens: the portal reads the profile once at sign-in and forgets the tokens."""

    def add(self, event, now=None):  # noqa: D401 - MSAL's hook
        return None


class EntraClient:
    """Per-app Entra state: the session, one MSAL application, cached discovery and keys."""

    def __init__(self, app: Flask):
        cfg = app.config
        self.client_id: str = cfg["ENTRA_CLIENT_ID"]
        self._secret: str = cfg["ENTRA_CLIENT_SECRET"]
        self.authority: str = cfg["ENTRA_AUTHORITY"].rstrip("/")
        self.graph: str = cfg["GRAPH_ENDPOINT"].rstrip("/")
        base = f"{cfg['PREFERRED_URL_SCHEME']}://{cfg['SERVER_NAME']}{cfg['APPLICATION_ROOT'].rstrip('/')}"
        self.base_url = base
        self.redirect_uri = base + CALLBACK_PATH
        self.admin_consent_redirect_uri = base + ADMIN_CONSENT_CALLBACK_PATH
        self.http = TimeoutSession(float(cfg["ENTRA_TIMEOUT"]), cfg.get("ENTRA_CA_BUNDLE"),
                                   trust_env=cfg["ENTRA_TRUST_ENV"])
        self._lock = threading.Lock()
        self._msal: msal.ConfidentialClientApplication | None = None
        self._discovery: dict[str, Any] | None = None
        self.keys = idtoken.KeySet(lambda: self.get(self.discovery()["jwks_uri"], "signing keys"))

    def get(self, url: str, what: str, **kwargs) -> requests.Response:
        """GET through the one session; a timeout or a failed connection becomes an EntraError."""
        try:
            return self.http.get(url, **kwargs)
        except requests.RequestException as e:
            if not isinstance(e, requests.Timeout):
                log.warning("Outbound %s failed: %s", what, type(e).__name__)
            raise upstream_error(what, e, url, self.http.default_timeout) from None

    def _msal_app(self) -> msal.ConfidentialClientApplication:
        self.discovery()  # checked first, then MSAL reads the same document (one fetch per process)
        with self._lock:
            if self._msal is None:
                try:
                    self._msal = msal.ConfidentialClientApplication(
                        self.client_id, client_credential=self._secret, authority=self.authority,
                        http_client=self.http, token_cache=_NoTokenCache(),
                        exclude_scopes=["offline_access"],  # no refresh token: no access after sign-in
                        # Never ask login.microsoftonline.com about another authority host (a staging emulator);
                        # MSAL skips that question for Microsoft's own hosts anyway.
                        instance_discovery=False)
                except requests.Timeout as e:
                    raise upstream_error("discovery", e) from None
                except (requests.RequestException, ValueError) as e:
                    log.warning("MSAL could not load the authority: %s", type(e).__name__)
                    raise EntraError("upstream_unreachable", "Microsoft's sign-in configuration could not be read.",
                                     status=502, title="Microsoft could not be reached",
                                     hint="Try again in a minute.") from None
            return self._msal

    def discovery(self) -> dict[str, Any]:
        """The authority's OpenID configuration, fetched once per process and checked against the authority."""
        if self._discovery is None:
            url = self.authority + DISCOVERY_PATH
            resp = self.get(url, "discovery")
            doc = json_or_none(resp)
            if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in
                                                    ("issuer", "jwks_uri", "authorization_endpoint")):
                raise EntraError("bad_discovery", "Microsoft's sign-in configuration could not be read.",
                                 status=502, title="Microsoft could not be reached",
                                 detail=f"{url} answered HTTP {resp.status_code} without an OpenID configuration.")
            host = urlsplit(self.authority).netloc
            tenant = urlsplit(self.authority).path.strip("/")
            allowed = {f"https://{host}/{{tenantid}}/v2.0"} if tenant in ("organizations", "common") else None
            issuer = doc["issuer"]
            if (allowed is not None and issuer not in allowed) or (
                    allowed is None and not re.fullmatch(rf"https://{re.escape(host)}/[0-9a-f-]{{36}}/v2\.0", issuer)):
                log.error("Discovery issuer does not match the authority %s", self.authority)
                expected = next(iter(allowed)) if allowed else f"https://{host}/<tenant id>/v2.0"
                raise EntraError("bad_discovery", "Microsoft's sign-in configuration does not match this portal's.",
                                 status=502, title="Sign-in configuration mismatch",
                                 hint="The operator should check ENTRA_AUTHORITY.",
                                 detail=f"{url} names the issuer {issuer[:200]}, not {expected}.")
            self.http.keep(url, resp)
            self._discovery = doc
        return self._discovery

    def browser_base(self) -> str:
        """Where browsers reach Entra: the authorize endpoint less '/{tenant}/oauth2/v2.0/authorize'."""
        endpoint = self.discovery()["authorization_endpoint"]
        return re.sub(r"/[^/]+/oauth2/v2\.0/authorize$", "", endpoint)

    # -- sign-in --------------------------------------------------------------------------------

    def start_sign_in(self, *, login_hint: str | None, domain_hint: str | None,
                      prompt: str | None = None) -> tuple[dict[str, Any], str]:
        """Begin the auth code flow (PKCE S256); return the flow to keep and the URL to send the browser to."""
        flow = self._msal_app().initiate_auth_code_flow(
            SCOPES, redirect_uri=self.redirect_uri, login_hint=login_hint, domain_hint=domain_hint,
            prompt=prompt, response_mode="query")
        auth_uri = flow.pop("auth_uri")  # carries the login hint: not kept in the cookie
        return flow, auth_uri

    def finish_sign_in(self, flow: dict[str, Any], params: dict[str, str]) -> SignIn:
        """Redeem the code, validate the ID token ourselves, read the profile once, drop the tokens.

        All of it (token, signing keys when not cached, /me, photo) shares one deadline of ENTRA_TIMEOUT, so a
        slow Microsoft holds a callback for that long at most, well inside the server's worker timeout.
        """
        if params.get("error"):
            raise explain(params.get("error"), params.get("error_description"))
        if not params.get("code"):
            raise EntraError("no_code", "Microsoft's answer had neither a code nor an error.", status=400)
        with self.http.deadline(self.http.default_timeout):
            return self._redeem(flow, params)

    def _redeem(self, flow: dict[str, Any], params: dict[str, str]) -> SignIn:
        """finish_sign_in's work, inside its deadline."""
        try:
            result = self._msal_app().acquire_token_by_auth_code_flow(flow, params, scopes=SCOPES)
        except requests.RequestException as e:
            raise upstream_error("token", e) from None
        except msal.exceptions.MsalServiceError as e:  # a 5xx from the token endpoint
            log.warning("Token endpoint failed: %s", type(e).__name__)
            raise EntraError("token_endpoint_error", "Microsoft's token service failed.", status=502,
                             title="Microsoft could not finish the sign-in", hint="Try again in a minute.") from None
        except RuntimeError:  # MSAL's nonce check
            raise EntraError("bad_nonce", "The sign-in answer does not belong to this sign-in.", status=401) from None
        except (ValueError, KeyError, IndexError, TypeError, UnicodeError) as e:
            # A non-JSON token response is a ValueError too; a state mismatch cannot reach here.
            log.warning("Token response unusable: %s", type(e).__name__)
            raise EntraError("bad_token_response", "Microsoft's token service sent an answer the portal cannot read.",
                             status=502, title="Microsoft could not finish the sign-in") from None
        if "error" in result:
            raise explain(result.get("error"), result.get("error_description"))
        id_token, access_token = result.get("id_token"), result.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise EntraError("no_id_token", "Microsoft's answer had no ID token.", status=502,
                             title="Microsoft could not finish the sign-in")
        claims = self.validate_id_token(id_token, nonce=flow.get("nonce", ""))
        profile, photo, photo_type, mail_nickname = self.read_profile(access_token, claims["oid"])
        return SignIn(claims=claims, profile=profile, photo=photo, photo_type=photo_type, mail_nickname=mail_nickname)

    def validate_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        """Check the ID token against the authority's keys and issuer and this client (see idtoken.validate)."""
        return idtoken.validate(token, nonce=nonce, client_id=self.client_id, keys=self.keys,
                                issuer=lambda: self.discovery()["issuer"])

    def read_profile(self, access_token: str, oid: str
                     ) -> tuple[dict[str, Any], bytes | None, str | None, str | None]:
        """Read /me and the photo once (see graph.read_profile)."""
        return graph.read_profile(self.get, self.graph, access_token, oid)

    # -- admin consent and sign-out -------------------------------------------------------------

    def admin_consent_url(self, tenant_id: str, state: str) -> str:
        query = urlencode({"client_id": self.client_id, "scope": ADMIN_CONSENT_SCOPE,
                           "redirect_uri": self.admin_consent_redirect_uri, "state": state})
        return f"{self.browser_base()}/{tenant_id}/v2.0/adminconsent?{query}"

    def tenant_of_issuer(self, iss: str) -> str | None:
        """The tenant a v2 issuer names (`{authority host}/{tid}/v2.0`, as front-channel logout sends it), or None."""
        parts = urlsplit(self.authority)
        prefix = f"{parts.scheme}://{parts.netloc}"
        found = _ISSUER_PATH.fullmatch(iss[len(prefix):]) if iss.startswith(prefix) else None
        return found.group(1) if found else None

    def logout_url(self, post_logout_path: str = "/login") -> str | None:
        """Entra's sign-out URL, or None when it cannot be had (local sign-out has happened anyway)."""
        try:
            endpoint = self.discovery().get("end_session_endpoint")
        except EntraError:
            return None
        if not isinstance(endpoint, str):
            return None
        return endpoint + "?" + urlencode({"post_logout_redirect_uri": self.base_url + post_logout_path})


def parse_admin_consent(params: dict[str, str]) -> AdminConsent:
    """Read an admin-consent callback whose state the caller has already checked: error first, then success."""
    if params.get("error"):
        raise explain_admin_consent(params.get("error"), params.get("error_description"))
    if str(params.get("admin_consent", "")).lower() != "true":
        raise EntraError("bad_admin_consent", "Microsoft's answer did not confirm admin consent.", status=400,
                         title="Admin consent was not confirmed")
    tenant = params.get("tenant")
    return AdminConsent(tenant_hint=tenant if isinstance(tenant, str) and idtoken.GUID.match(tenant) else None,
                        scope=str(params.get("scope", ""))[:500])
