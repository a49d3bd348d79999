"""The Entra ID client: MSAL's auth code flow, our own ID token validation, admin consent and Graph.

Every outbound call goes through one requests.Session with a timeout. In demo mode and in tests that
session carries the emulator's transport adapter; nothing else in this module knows about it.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import unicodedata
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlencode, urlsplit

import jwt
import msal
import requests
from flask import Flask, current_app

log = logging.getLogger(__name__)

CALLBACK_PATH = "/auth/callback"
ADMIN_CONSENT_CALLBACK_PATH = "/auth/admin-consent/callback"
DISCOVERY_PATH = "/v2.0/.well-known/openid-configuration"  # under the authority
SCOPES = ["User.Read"]
ADMIN_CONSENT_SCOPE = "https://graph.microsoft.com/.default"
PERSONAL_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
LEEWAY_SECONDS = 60
JWKS_REFETCHES_PER_MINUTE = 10
MAX_ID_TOKEN = 16 * 1024
MAX_PHOTO = 512 * 1024
MAX_CLAIM = 256
# The basic profile we read, and nothing more (Graph leaves `id` out unless it is selected).
PROFILE_FIELDS = (
    "id", "displayName", "givenName", "surname", "mail", "userPrincipalName", "jobTitle", "companyName",
    "department", "businessPhones", "mobilePhone", "officeLocation", "streetAddress", "city", "state",
    "postalCode", "country", "preferredLanguage",
)
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_AADSTS = re.compile(r"^AADSTS(\d{4,7})\b")
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


class EntraError(Exception):
    """Sign-in or consent could not finish; carries what the error page says and a code for the audit log."""

    def __init__(self, reason: str, message: str, *, status: int = 401, title: str = "Sign-in with Microsoft failed",
                 hint: str | None = None, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        # `detail` is for the operator (check-config, the log), never for the page.
        self.reason, self.message, self.status, self.title, self.hint, self.code, self.detail = (
            reason, message, status, title, hint, code, detail)


@dataclass
class SignIn:
    """What a finished sign-in yields: validated claims and the profile read once from Graph."""

    claims: dict[str, Any]
    profile: dict[str, Any]
    photo: bytes | None = None
    photo_type: str | None = None
    tenant_id: str = field(init=False)
    object_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.tenant_id = self.claims["tid"]
        self.object_id = self.claims["oid"]


@dataclass(frozen=True)
class AdminConsent:
    tenant_hint: str | None
    scope: str


# -- plain-language explanations of Entra error codes ------------------------------------------

_EXPLAIN: dict[str, tuple[int, str, str, str]] = {
    # code: (status, title, what happened, what an admin can do)
    "65004": (403, "Consent was declined",
              "You chose not to let the portal read your basic profile, so you are not signed in.",
              "Start again and accept, or ask your administrator to grant consent for the organisation."),
    "65001": (403, "Consent is needed",
              "Your organisation has not yet allowed the portal to read your basic profile.",
              "An administrator can grant consent for the organisation in Settings → SECURITY."),
    "90094": (403, "An administrator must approve the portal",
              "Your organisation lets only administrators approve apps, and the portal is not approved yet.",
              "Ask an Entra administrator to grant admin consent (Settings → SECURITY → Admin consent)."),
    "50105": (403, "You are not assigned to the portal",
              "Your organisation requires users to be assigned to this app, and you are not.",
              "An Entra administrator can assign you under Enterprise applications → the portal → Users and groups."),
    "50020": (403, "That account is not in this organisation",
              "The Microsoft account you used does not belong to the organisation's tenant.",
              "Sign in with your work account of that organisation."),
    "50011": (502, "The portal's sign-in address is not registered",
              "Microsoft did not recognise the portal's redirect address.",
              "The operator must register the portal's redirect URI in the app registration."),
    "500112": (502, "The portal's sign-in address is not registered",
               "Microsoft did not recognise the portal's redirect address.",
               "The operator must register the portal's redirect URI in the app registration."),
    "900971": (502, "The portal's sign-in address is not registered",
               "Microsoft did not receive the portal's redirect address.",
               "The operator must register the portal's redirect URI in the app registration."),
    "50194": (502, "The portal is registered for one tenant only",
              "The app registration is single-tenant but the portal signs in through /organizations.",
              "The operator should make the app registration multi-tenant."),
    "700016": (502, "The portal is not known to Microsoft",
               "Microsoft could not find the portal's app registration.",
               "The operator must check ENTRA_CLIENT_ID and that the app is registered."),
    "90002": (502, "Tenant not found", "Microsoft could not find that tenant.",
              "Check the organisation's domain and tenant settings."),
    "53003": (403, "Blocked by your organisation's access policy",
              "A Conditional Access policy of your organisation blocked this sign-in.",
              "Ask your Entra administrator which policy applies."),
    "50076": (403, "Multi-factor authentication needed", "Your organisation requires a second factor.",
              "Start again and complete multi-factor authentication."),
    "50079": (403, "Multi-factor authentication needed", "You must register a second factor first.",
              "Register for multi-factor authentication, then start again."),
    "54005": (400, "This sign-in was already used", "The sign-in code was already redeemed.",
              "Start the sign-in again."),
    "70008": (400, "This sign-in expired", "The sign-in code expired before it was used.",
              "Start the sign-in again."),
    "501481": (400, "This sign-in did not match", "The sign-in code belongs to another sign-in attempt.",
               "Start the sign-in again in one tab."),
    "7000215": (502, "The portal's credentials are not valid",
                "Microsoft refused the portal's client secret.",
                "The operator must set a valid ENTRA_CLIENT_SECRET."),
    "7000222": (502, "The portal's credentials have expired",
                "The portal's client secret has expired.",
                "The operator must create a new client secret and set ENTRA_CLIENT_SECRET."),
}


def aadsts_code(description: str | None) -> str | None:
    """The AADSTS number at the start of an error description (Microsoft asks apps to parse no more)."""
    m = _AADSTS.match((description or "").strip())
    return m.group(1) if m else None


def explain(error: str | None, description: str | None) -> EntraError:
    """An EntraError for an error Entra sent, in plain words."""
    code = aadsts_code(description)
    if code in _EXPLAIN:
        status, title, message, hint = _EXPLAIN[code]
    else:
        status, title = (403, "Sign-in with Microsoft was not completed")
        message = "Microsoft returned an error and did not sign you in."
        hint = "Try again; if it keeps happening, give your administrator the code below."
    # `error` comes from the callback's query string: keep it to a code's characters (logs, audit, page).
    label = f"AADSTS{code}" if code else (re.sub(r"[^A-Za-z0-9_]", "", error or "")[:40] or "unknown_error")
    return EntraError(f"entra_{label}", message, status=status, title=title, hint=hint, code=label)


# -- wiring -------------------------------------------------------------------------------------

class _TimeoutSession(requests.Session):
    """The one outbound session: every call gets a timeout, even MSAL's, which sends none. A GET answer the portal
    has checked and kept (the authority's discovery document) is answered from memory, so MSAL reads ours."""

    def __init__(self, timeout: float, ca_bundle: str | None = None):
        super().__init__()
        self.default_timeout = timeout
        if ca_bundle:
            self.verify = ca_bundle  # the CAs to trust instead of the system's (ENTRA_CA_BUNDLE)
        self._kept: dict[str, requests.Response] = {}
        self._deadline = threading.local()  # per request: gthread workers serve several at once

    def keep(self, url: str, resp: requests.Response) -> None:
        self._kept[url] = resp

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Let the calls made inside share `seconds`: each gets what is left, none starts after it has run out."""
        self._deadline.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline.at = None

    def request(self, method, url, **kwargs):  # type: ignore[override]
        if method.upper() == "GET" and url in self._kept:
            return self._kept[url]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify  # a bundle given here wins over REQUESTS_CA_BUNDLE
        at = getattr(self._deadline, "at", None)
        if at is not None:
            left = at - time.monotonic()
            if left <= 0:
                raise requests.exceptions.ReadTimeout(f"No time left for {method} {url}")
            kwargs["timeout"] = min(kwargs["timeout"], left)
        return super().request(method, url, **kwargs)


class _NoTokenCache(msal.TokenCache):
    """Keep no tokens: the portal reads the profile once at sign-in and forgets the tokens."""

    def add(self, event, now=None):  # noqa: D401 - MSAL's hook
        return None


def init_app(app: Flask) -> None:
    # Query response mode keeps the callback same-site, so the Lax session cookie arrives with it.
    warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", module="msal")
    app.extensions["entra"] = EntraClient(app)


def get_http(app: Flask) -> requests.Session:
    return app.extensions["entra"].http


def client() -> EntraClient:
    return current_app.extensions["entra"]


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
        self.http = _TimeoutSession(float(cfg["ENTRA_TIMEOUT"]), cfg.get("ENTRA_CA_BUNDLE"))
        self._lock = threading.Lock()
        self._msal: msal.ConfidentialClientApplication | None = None
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, its published issuer)
        self._keys_fetched_at = 0.0
        self._refetches: deque[float] = deque()

    # -- outbound helpers -----------------------------------------------------------------------

    def _get(self, url: str, what: str, **kwargs) -> requests.Response:
        try:
            return self.http.get(url, **kwargs)
        except requests.Timeout:
            raise EntraError("upstream_timeout", f"Microsoft did not answer in time ({what}).", status=504,
                             title="Microsoft is not answering", hint="Try again in a minute.",
                             detail=f"{url} did not answer within {self.http.default_timeout:g} s.") from None
        except requests.RequestException as e:
            log.warning("Outbound %s failed: %s", what, type(e).__name__)
            raise EntraError("upstream_unreachable", f"Microsoft could not be reached ({what}).", status=502,
                             title="Microsoft could not be reached", hint="Try again in a minute.",
                             detail=f"{url} could not be reached ({type(e).__name__}).") from None

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
                except requests.Timeout:
                    raise EntraError("upstream_timeout", "Microsoft did not answer in time (discovery).", status=504,
                                     title="Microsoft is not answering", hint="Try again in a minute.") from None
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
            resp = self._get(url, "discovery")
            try:
                doc = resp.json() if resp.status_code == 200 else None
            except ValueError:
                doc = None
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
        except requests.Timeout:
            raise EntraError("upstream_timeout", "Microsoft did not answer in time (token).", status=504,
                             title="Microsoft is not answering", hint="Try again in a minute.") from None
        except requests.RequestException:
            raise EntraError("upstream_unreachable", "Microsoft could not be reached (token).", status=502,
                             title="Microsoft could not be reached", hint="Try again in a minute.") from None
        except msal.exceptions.MsalServiceError as e:  # a 5xx from the token endpoint
            log.warning("Token endpoint failed: %s", type(e).__name__)
            raise EntraError("token_endpoint_error", "Microsoft's token service failed.", status=502,
                             title="Microsoft could not finish the sign-in", hint="Try again in a minute.") from None
        except RuntimeError:  # MSAL's nonce check
            raise EntraError("bad_nonce", "The sign-in answer does not belong to this sign-in.", status=401) from None
        except ValueError as e:
            # A non-JSON token response is a ValueError too; a state mismatch cannot reach here.
            log.warning("Token response unusable: %s", type(e).__name__)
            raise EntraError("bad_token_response", "Microsoft's token service sent an answer the portal cannot read.",
                             status=502, title="Microsoft could not finish the sign-in") from None
        except (KeyError, IndexError, TypeError, UnicodeError):
            raise EntraError("bad_token_response", "Microsoft's token service sent an answer the portal cannot read.",
                             status=502, title="Microsoft could not finish the sign-in") from None
        if "error" in result:
            raise explain(result.get("error"), result.get("error_description"))
        id_token, access_token = result.get("id_token"), result.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise EntraError("no_id_token", "Microsoft's answer had no ID token.", status=502,
                             title="Microsoft could not finish the sign-in")
        claims = self.validate_id_token(id_token, nonce=flow.get("nonce", ""))
        profile, photo, photo_type = self.read_profile(access_token, claims["oid"])
        return SignIn(claims=claims, profile=profile, photo=photo, photo_type=photo_type)

    # -- ID token validation (MSAL does none) ---------------------------------------------------

    def _fetch_keys(self) -> None:
        resp = self._get(self.discovery()["jwks_uri"], "signing keys")
        try:
            entries = resp.json().get("keys", []) if resp.status_code == 200 else []
        except (ValueError, AttributeError):
            entries = []
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in entries if isinstance(entries, list) else []:
            try:
                issuer = entry.get("issuer")
                if (entry.get("kty") == "RSA" and entry.get("use", "sig") == "sig"
                        and (issuer is None or isinstance(issuer, str))):
                    keys[str(entry.get("kid", ""))] = (jwt.PyJWK(entry, algorithm="RS256"), issuer)
            except (jwt.PyJWTError, AttributeError, TypeError, ValueError):  # InvalidKeyError is no PyJWKError
                log.warning("Ignored an unusable key in the JWKS")
        self._keys, self._keys_fetched_at = keys, time.monotonic()

    def _signing_key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        """The published key for `kid` and its issuer; an unknown kid refetches once (keys rotate), rate-limited."""
        with self._lock:
            if not self._keys_fetched_at:
                self._fetch_keys()
            elif kid is not None and kid not in self._keys and self._may_refetch():
                self._fetch_keys()
            if kid is None:
                if len(self._keys) == 1:
                    return next(iter(self._keys.values()))
                raise _invalid("no_kid")
            if kid not in self._keys:
                raise _invalid("unknown_kid")
            return self._keys[kid]

    def _may_refetch(self) -> bool:
        now = time.monotonic()
        while self._refetches and now - self._refetches[0] > 60:
            self._refetches.popleft()
        if len(self._refetches) >= JWKS_REFETCHES_PER_MINUTE:
            return False
        self._refetches.append(now)
        return True

    def validate_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        """Check signature (RS256, published keys only), audience, issuer, times, tenant and nonce."""
        if len(token) > MAX_ID_TOKEN:
            raise _invalid("oversized")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        if header.get("alg") != "RS256":
            raise _invalid("bad_alg")
        kid = header.get("kid")
        key, key_issuer = self._signing_key(kid if isinstance(kid, str) else None)  # never keys in the header
        try:
            claims = jwt.decode(
                token, key.key, algorithms=["RS256"], audience=self.client_id, leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "aud", "iss", "sub", "tid", "oid"]})
        except jwt.ExpiredSignatureError:
            raise _invalid("expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise _invalid("bad_aud") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad_signature") from None
        except jwt.PyJWTError:
            raise _invalid("bad_claims") from None
        tid, oid = str(claims["tid"]), str(claims["oid"])
        if not _GUID.match(tid) or not _GUID.match(oid):
            raise _invalid("bad_ids")
        if tid == PERSONAL_TENANT:
            raise EntraError("personal_account", "Personal Microsoft accounts cannot sign in here.", status=403,
                             title="Use your work account", hint="Sign in with the account your organisation gave you.")
        if claims["iss"] != self.discovery()["issuer"].replace("{tenantid}", tid):
            raise _invalid("bad_iss")
        # Microsoft's common key set says which issuer each key signs for (a personal-account key must not
        # sign a work tenant's token).
        if key_issuer is not None and claims["iss"] != key_issuer.replace("{tenantid}", tid):
            raise _invalid("bad_key_issuer")
        if claims.get("ver") != "2.0":
            raise _invalid("bad_ver")
        if isinstance(claims["aud"], list) and claims["aud"] != [self.client_id]:
            raise _invalid("bad_aud")
        if "azp" in claims and claims["azp"] != self.client_id:
            raise _invalid("bad_azp")
        expected = hashlib.sha256(nonce.encode()).hexdigest()
        if not isinstance(claims.get("nonce"), str) or claims["nonce"] != expected:
            raise _invalid("bad_nonce")
        return claims

    # -- Graph ----------------------------------------------------------------------------------

    def read_profile(self, access_token: str, oid: str) -> tuple[dict[str, Any], bytes | None, str | None]:
        """Read /me (basic profile) and the photo once; /me must describe the token's user."""
        auth = {"Authorization": f"Bearer {access_token}"}
        resp = self._get(self.graph + "/me", "profile", params={"$select": ",".join(PROFILE_FIELDS)}, headers=auth)
        try:
            data = resp.json() if resp.status_code == 200 else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("Graph /me answered %s", resp.status_code)
            raise EntraError("graph_error", "Microsoft Graph did not return your profile.", status=502,
                             title="Your profile could not be read", hint="Try again in a minute.")
        if data.get("id") != oid:
            raise EntraError("graph_id_mismatch", "Microsoft Graph returned a profile of another user.", status=502,
                             title="Your profile could not be read")
        profile = {k: _clean(data.get(k)) for k in PROFILE_FIELDS if k != "id" and data.get(k) not in (None, "", [])}
        photo, photo_type = self._read_photo(auth)
        return profile, photo, photo_type

    def _read_photo(self, auth: dict[str, str]) -> tuple[bytes | None, str | None]:
        try:
            resp = self._get(self.graph + "/me/photo/$value", "photo", headers=auth)
        except EntraError:
            return None, None  # a photo is nice to have; sign-in goes on without it
        if resp.status_code != 200 or len(resp.content) > MAX_PHOTO:
            return None, None
        kind = photo_type(resp.content)
        return (resp.content, kind) if kind else (None, None)

    # -- admin consent and sign-out -------------------------------------------------------------

    def admin_consent_url(self, tenant_id: str, state: str) -> str:
        query = urlencode({"client_id": self.client_id, "scope": ADMIN_CONSENT_SCOPE,
                           "redirect_uri": self.admin_consent_redirect_uri, "state": state})
        return f"{self.browser_base()}/{tenant_id}/v2.0/adminconsent?{query}"

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
    return AdminConsent(tenant_hint=tenant if isinstance(tenant, str) and _GUID.match(tenant) else None,
                        scope=str(params.get("scope", ""))[:500])


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


def _invalid(reason: str) -> EntraError:
    log.warning("ID token rejected: %s", reason)
    return EntraError(f"id_token_{reason}", "Microsoft's answer could not be verified, so you are not signed in.",
                      status=401, title="Sign-in could not be verified",
                      hint="Start the sign-in again. If it keeps failing, tell the portal's operator.")


# -- admin consent errors -----------------------------------------------------------------------

_MANUAL_PATH = ("Or grant it by hand: Entra admin centre → Enterprise applications → the portal → Permissions → "
                "Grant admin consent for (your company), then review the Microsoft Graph permission User.Read.")
_EXPLAIN_ADMIN_CONSENT: dict[str, tuple[int, str, str, str]] = {
    # The sign-in texts speak to a member; an admin granting for everyone needs other words.
    "65004": (403, "Admin consent was declined",
              "Cancel was chosen on Microsoft's permissions page, so nothing was granted and members are still "
              "asked one by one.",
              "Start again from Settings → SECURITY and choose Accept. " + _MANUAL_PATH),
    "90094": (403, "That account cannot grant admin consent",
              "The Microsoft account you used is not allowed to grant consent for the whole organisation. "
              "Nothing was granted.",
              "Use an account with the Global Administrator, Cloud Application Administrator or Application "
              "Administrator role, or ask one of them. " + _MANUAL_PATH),
}


def explain_admin_consent(error: str | None, description: str | None) -> EntraError:
    """An EntraError for a failed admin-consent round trip, in words for the admin who tried."""
    code = aadsts_code(description)
    if code not in _EXPLAIN_ADMIN_CONSENT:
        found = explain(error, description)
        found.title = "Admin consent was not granted"
        found.hint = (found.hint or "") + " " + _MANUAL_PATH
        return found
    status, title, message, hint = _EXPLAIN_ADMIN_CONSENT[code]
    return EntraError(f"entra_AADSTS{code}", message, status=status, title=title, hint=hint, code=f"AADSTS{code}")
