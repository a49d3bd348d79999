"""Why sign-in or consent failed: EntraError and plain-language explanations of Entra's AADSTS codes."""
from __future__ import annotations

import re

import requests

_AADSTS = re.compile(r"^AADSTS(\d{4,7})\b")


class EntraError(Exception):
    """Sign-in or consent could not finish; carries what the error page says and a code for the audit log."""

    def __init__(self, reason: str, message: str, *, status: int = 401, title: str = "Sign-in with Microsoft failed",
                 hint: str | None = None, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        # `detail` is for the operator (check-config, the log), never for the page.
        self.reason, self.message, self.status, self.title, self.hint, self.code, self.detail = (
            reason, message, status, title, hint, code, detail)


def upstream_error(what: str, exc: Exception, url: str | None = None, timeout: float | None = None) -> EntraError:
    """The EntraError for an outbound call to Microsoft that timed out or could not connect."""
    if isinstance(exc, requests.Timeout):
        return EntraError("upstream_timeout", f"Microsoft did not answer in time ({what}).", status=504,
                          title="Microsoft is not answering", hint="Try again in a minute.",
                          detail=f"{url} did not answer within {timeout:g} s." if url else None)
    return EntraError("upstream_unreachable", f"Microsoft could not be reached ({what}).", status=502,
                      title="Microsoft could not be reached", hint="Try again in a minute.",
                      detail=f"{url} could not be reached ({type(exc).__name__})." if url else None)


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
