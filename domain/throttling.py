"""Sign-in throttle keys: keyed hashes of accounts and clients, so the counters hold no email or IP address."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import current_app


def _throttle_hash(value: str) -> str:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"throttle:" + value.encode(), hashlib.sha256).hexdigest()[:32]


def _address_group(address: str | None) -> str:
    """The client as the throttles count it: an IPv4 address, or the /64 of an IPv6 one (one home or host's
    privacy addresses share a /64, so counting each address alone would let one client rotate through them)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "-"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def account_key(email: str) -> str:
    """A keyed hash of a normalised email, for the failed-password counts (the database holds no email)."""
    return _throttle_hash(email)


def address_key(address: str | None) -> str:
    """A keyed hash of a client (see _address_group), for rate limits: the counters in the database hold no IP
    address."""
    return _throttle_hash("address:" + _address_group(address))
