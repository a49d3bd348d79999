"""Email addresses and domain names: normalised one way everywhere; the emails a Microsoft token vouches for."""
from __future__ import annotations

import re

import idna

import entra
from domain.errors import InvalidInput
from models import Organization

MAX_EMAIL = 254
_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_NUMBER = re.compile(r"[0-9]{1,9}")


def normalise_domain(raw: str) -> str:
    """Lower-case IDNA A-label without a trailing dot; InvalidInput if it is no domain."""
    name = (raw or "").strip().rstrip(".")
    if not name or len(name) > 253 or any(c.isspace() or ord(c) < 32 for c in name):
        raise InvalidInput("That is not a valid domain name.")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidInput("That is not a valid domain name.") from None
    if "." not in ascii_name:
        raise InvalidInput("A domain needs at least one dot, like example.com.")
    return ascii_name


def normalise_email(raw: str) -> str:
    """Trim, lower-case and IDNA-encode an email address; InvalidInput when it is not one."""
    value = (raw or "").strip()
    if not value or len(value) > MAX_EMAIL or value.count("@") != 1:
        raise InvalidInput("Enter an email address like name@example.com.")
    local, _, domain = value.partition("@")
    if not _LOCAL_PART.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidInput("Enter an email address like name@example.com.")
    try:
        domain = normalise_domain(domain)
    except InvalidInput:
        raise InvalidInput("Enter an email address like name@example.com.") from None
    return f"{local.lower()}@{domain}"


def normalise_or_raw(value: str) -> str:
    try:
        return normalise_email(value)
    except InvalidInput:
        return value


def parse_number(text: str) -> int | None:
    """A whole number given as 1 to 9 ASCII digits, else None (`str.isdigit` also takes '²', which int() refuses)."""
    return int(text) if isinstance(text, str) and _NUMBER.fullmatch(text) else None


def page_number(page: str | int, total: int, size: int, listing: str) -> tuple[int, int]:
    """The page asked for and how many pages `total` rows make; a page that does not exist is a 404."""
    pages = max(1, -(-total // size))
    number = parse_number(str(page)) or 0
    if not 1 <= number <= pages:
        raise InvalidInput(f"{listing} has {pages} page{'s' if pages > 1 else ''}.", status=404, title="No such page")
    return number, pages


def verified_emails(result: entra.SignIn) -> list[str]:
    """Emails the token vouches for: the UPN, and `email` only when Entra marks its domain verified."""
    found = []
    for value, trusted in ((result.claims.get("preferred_username"), True),
                           (result.claims.get("email"), result.claims.get("xms_edov") in (True, "true", "1", 1))):
        if trusted and isinstance(value, str):
            try:
                found.append(normalise_email(value))
            except InvalidInput:
                pass
    return found


def org_emails(org: Organization, result: entra.SignIn) -> list[str]:
    """The token's verified emails in the organisation's domains."""
    domains = {d.name for d in org.domains}
    return [e for e in verified_emails(result) if e.rpartition("@")[2] in domains]
