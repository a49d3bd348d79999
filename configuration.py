"""The portal's settings: defaults, the layers, and every problem with them found at once."""
from __future__ import annotations

import ipaddress
import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from flask import Flask

import throttles
import vault

DEFAULT_AUTHORITY = "https://login.microsoftonline.com/organizations"
WEAK_SECRETS = {"dev", "secret", "changeme", "change-me", "development", "test"}
# Every boolean the portal, Flask and its extensions read: only a real boolean may switch one (a string such as
# "False" from FLASK_DEBUG is truthy in Python and would silently turn debug on).
BOOLEAN_KEYS = (
    "DEBUG", "TESTING", "DEMO_MODE", "PROPAGATE_EXCEPTIONS", "TRAP_HTTP_EXCEPTIONS", "TRAP_BAD_REQUEST_ERRORS",
    "TEMPLATES_AUTO_RELOAD", "EXPLAIN_TEMPLATE_LOADING", "USE_X_SENDFILE", "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY", "SESSION_COOKIE_PARTITIONED", "SESSION_REFRESH_EACH_REQUEST",
    "WTF_CSRF_ENABLED", "WTF_CSRF_CHECK_DEFAULT", "WTF_CSRF_SSL_STRICT", "SQLALCHEMY_ECHO",
    "SQLALCHEMY_RECORD_QUERIES", "SQLALCHEMY_TRACK_MODIFICATIONS", "RATELIMIT_ENABLED", "RATELIMIT_HEADERS_ENABLED",
    "RATELIMIT_SWALLOW_ERRORS", "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", "RATELIMIT_KEY_PREFIX_ENABLED", "ENTRA_TRUST_ENV",
)
# Numbers the portal computes with: (key, smallest allowed value).
NUMBER_KEYS = (("ENTRA_TIMEOUT", 0.001), ("SESSION_IDLE_MINUTES", 0.001), ("SESSION_MAX_HOURS", 0.001),
               ("SESSION_SWEEP_SECONDS", 0),
               ("PROXY_FIX_X_FOR", 0), ("PROXY_FIX_X_PROTO", 0), ("MAX_CONTENT_LENGTH", 1),
               ("SCIM_MAX_CONTENT_LENGTH", 1))
WHERE = "in instance/config.py or as FLASK_{key}"


class ConfigError(RuntimeError):
    """Start-up refused because the configuration is unsafe or incomplete."""


def defaults() -> dict[str, Any]:
    return dict(
        SECRET_KEY=None,
        SQLALCHEMY_DATABASE_URI=None,
        ENTRA_CLIENT_ID=None,
        ENTRA_CLIENT_SECRET=None,
        ENTRA_AUTHORITY=DEFAULT_AUTHORITY,
        GRAPH_ENDPOINT="https://graph.microsoft.com/v1.0",
        ENTRA_TIMEOUT=10.0,
        ENTRA_CA_BUNDLE=None,  # a PEM file of CAs for outbound calls instead of the system's (a staging emulator)
        ENTRA_TRUST_ENV=True,  # False: outbound calls ignore HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, .netrc
        ENCRYPTION_KEYS=None,
        ENCRYPTION_KEY_FILE=None,
        DEMO_MODE=False,
        SESSION_IDLE_MINUTES=30,
        SESSION_SWEEP_SECONDS=60,  # a worker's sign-ins sweep expired sessions at most this often (0: every one)
        SESSION_MAX_HOURS=8,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_REFRESH_EACH_REQUEST=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # tokens live as long as the session
        PREFERRED_URL_SCHEME="https",
        # Behind a reverse proxy: how many proxies set X-Forwarded-For / -Proto (0 = trust none).
        PROXY_FIX_X_FOR=0,
        PROXY_FIX_X_PROTO=0,
        # Sign-in throttles (Flask-Limiter syntax); clients are counted by IPv4 address or IPv6 /64, accounts by
        # the normalised email, both only as keyed hashes. Per client: every sign-in request (login prompt,
        # password step, "Continue to Microsoft", callbacks), generous enough for a company behind one NAT, and
        # password steps alone. Per account and client: failed password checks only.
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=throttles.SCHEME + "://",  # the portal's database: every worker counts together
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_SIGN_IN_PER_IP="1000 per minute; 10000 per hour",
        RATELIMIT_PASSWORD_PER_IP="60 per minute; 600 per hour",
        RATELIMIT_SIGN_IN_PER_ACCOUNT="10 per minute; 100 per hour",
        # User provisioning (SCIM): requests per bearer token (Entra's provisioning service); a larger body limit
        # than the pages' for PATCHes that add hundreds of group members at once.
        RATELIMIT_SCIM="6000 per minute",
        SCIM_MAX_CONTENT_LENGTH=1024 * 1024,
        # The portal's own name and links (header, titles, consent explanation, footer).
        PORTAL_NAME="Customer Portal",
        PORTAL_LOGO=None,  # a file name in instance/ (.png, .svg, .jpg, .webp), served at /logo
        SUPPORT_URL=None,
        PRIVACY_URL=None,
    )


def load(app: Flask, test_config: Mapping[str, Any] | None) -> None:
    """Defaults, then instance/config.py, then FLASK_* variables, then test_config."""
    app.config.from_mapping(defaults())
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)


def _boolean(value: Any) -> bool | None:
    """True/False for a real boolean (1/0 included), None for anything else."""
    if value is True or value is False:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    return None


def problems(config: Mapping[str, Any], instance_path: str) -> list[str]:
    """Every problem with the settings, one line each naming the key and the fix; [] when they are complete."""
    found: list[str] = []
    for key in BOOLEAN_KEYS:
        value = config.get(key)
        if value is not None and _boolean(value) is None:
            found.append(f"{key} must be true or false (JSON true/false or 1/0), not {_show(value)}: "
                         f"fix it {WHERE.format(key=key)}.")
    for key, least in NUMBER_KEYS:
        value = config.get(key)
        if value is None and key == "MAX_CONTENT_LENGTH":
            continue  # no limit
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
            found.append(f"{key} must be a number of at least {least:g}, not {_show(value)}: "
                         f"fix it {WHERE.format(key=key)}.")
    demo = _boolean(config.get("DEMO_MODE")) is True
    secret = config.get("SECRET_KEY")
    text = secret.decode(errors="replace") if isinstance(secret, bytes) else str(secret or "")
    if (secret or not demo) and (len(text) < 32 or text.lower() in WEAK_SECRETS):
        found.append("SECRET_KEY is missing or weak: set FLASK_SECRET_KEY to at least 32 random characters, "
                     'e.g. python -c "import secrets; print(secrets.token_urlsafe(48))"')
    if demo:
        if config.get("ENTRA_CLIENT_ID") or config.get("ENTRA_CLIENT_SECRET"):
            found.append("DEMO_MODE is on while real Entra settings (ENTRA_CLIENT_ID/ENTRA_CLIENT_SECRET) are given: "
                         "choose one. Demo mode only talks to the built-in emulator.")
        if config.get("ENTRA_AUTHORITY") != DEFAULT_AUTHORITY:
            found.append("DEMO_MODE uses the default ENTRA_AUTHORITY; remove the setting or leave demo mode.")
    else:
        missing = [k for k in ("ENTRA_CLIENT_ID", "ENTRA_CLIENT_SECRET", "SERVER_NAME") if not config.get(k)]
        if missing:
            found.append("Missing settings: " + ", ".join(missing) + ". Set them in instance/config.py or as "
                         "FLASK_<NAME> environment variables (see the README), or set FLASK_DEMO_MODE=1 to try "
                         "the portal with the emulator.")
    for key in ("ENTRA_AUTHORITY", "GRAPH_ENDPOINT"):
        if not str(config.get(key) or "").startswith("https://"):
            found.append(f"{key} must be an https:// URL: fix it {WHERE.format(key=key)}.")
    bundle = config.get("ENTRA_CA_BUNDLE")
    if bundle and not os.path.isfile(bundle):
        found.append(f"ENTRA_CA_BUNDLE is not a file: {_show(bundle)}. Give the path of a PEM file of CA certificates.")
    storage = config.get("RATELIMIT_STORAGE_URI")
    if not isinstance(storage, str) or not storage:
        found.append(f"RATELIMIT_STORAGE_URI must be a storage URI such as {throttles.SCHEME}://.")
    elif storage.startswith(throttles.SCHEME + ":") and config.get("RATELIMIT_STRATEGY") != "moving-window":
        found.append(f"RATELIMIT_STORAGE_URI {throttles.SCHEME}:// counts with RATELIMIT_STRATEGY 'moving-window' "
                     "only; remove the strategy setting or choose another storage (memory://, redis://...).")
    found += _branding_problems(config, instance_path)
    keys, key_file = config.get("ENCRYPTION_KEYS"), config.get("ENCRYPTION_KEY_FILE")
    try:
        if vault.is_set(keys):
            vault.parse_keys(keys)
        elif key_file:
            vault.load_key_file(os.path.join(instance_path, os.fspath(key_file)))
        elif not demo:
            vault.missing_keys()
    except vault.KeyConfigError as e:
        found.append(str(e) if str(e).startswith("ENCRYPTION_KEYS") else f"Encryption keys: {e}.")
    return found


LOGO_TYPES = (".png", ".svg", ".jpg", ".jpeg", ".webp")


def _branding_problems(config: Mapping[str, Any], instance_path: str) -> list[str]:
    """PORTAL_NAME, PORTAL_LOGO, SUPPORT_URL and PRIVACY_URL: values that would break or endanger pages."""
    found = []
    name = config.get("PORTAL_NAME")
    if not isinstance(name, str) or not name.strip() or len(name) > 80 or not name.isprintable():
        found.append("PORTAL_NAME is 1 to 80 printable characters, e.g. 'Contoso Customer Portal'.")
    logo = config.get("PORTAL_LOGO")
    if logo:
        path = os.path.join(instance_path, str(logo))
        if os.path.basename(str(logo)) != logo or os.path.splitext(logo)[1].lower() not in LOGO_TYPES:
            found.append("PORTAL_LOGO names a file in the instance folder (no path), ending in "
                         + ", ".join(LOGO_TYPES) + f": got {logo!r}.")
        elif not os.path.isfile(path):
            found.append(f"PORTAL_LOGO: {path} does not exist; put the logo there or remove the setting.")
    for key, schemes in (("SUPPORT_URL", ("https", "http", "mailto")), ("PRIVACY_URL", ("https", "http"))):
        value = config.get(key)
        if value and (not isinstance(value, str) or urlsplit(value).scheme.lower() not in schemes
                      or any(c.isspace() or ord(c) < 32 for c in value)
                      or (urlsplit(value).scheme.lower() != "mailto" and not urlsplit(value).netloc)):
            found.append(f"{key} is a full {' or '.join(s + ':' for s in schemes)} address, "
                         f"e.g. https://example.com/{key.split('_')[0].lower()}: got {value!r}.")
    return found


def is_loopback(address: str) -> bool:
    """Whether an address (an IP, or a name under localhost) can only be this computer."""
    name = address.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False  # a Unix socket, another name or garbage: not provably this computer
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(app: Flask) -> list[str]:
    """Record every problem on the app (check-config prints them) and refuse to start on the first one."""
    found = problems(app.config, app.instance_path)
    app.extensions["config_problems"] = found
    if found:
        more = f" ({len(found) - 1} more: run `flask --app app check-config` to see them all)" if len(found) > 1 else ""
        raise ConfigError(found[0] + more)
    for key in BOOLEAN_KEYS:
        if app.config.get(key) is not None:
            app.config[key] = _boolean(app.config[key])
    return found
