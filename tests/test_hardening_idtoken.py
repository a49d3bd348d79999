"""ID token and discovery conformance (OpenID RP tests adapted to Entra), beyond the faults in test_sso.py.

Every case runs the real sign-in: the portal's MSAL path against the emulator made to misbehave.
"""
from __future__ import annotations

import jwt
import pytest

from helpers import (NORTHWIND_TID, activate_sso, password_sign_in, sign_in_state, signed_in, sso_sign_in, submit,
                     through_microsoft)
from models import AuditEvent, db

LENA = "lena.fischer@northwind.example"
ATTACKER_KEYS = "https://attacker.example/keys.json"

REFUSED = {
    "jwk offered in the header": {"id_token_alg": "embedded-jwk"},
    "jku offered in the header": {"id_token_alg": "foreign-key", "id_token_header": {"jku": ATTACKER_KEYS}},
    "x5u offered in the header": {"id_token_alg": "foreign-key", "id_token_header": {"x5u": ATTACKER_KEYS}},
    "jku and no kid": {"id_token_alg": "foreign-key", "id_token_header": {"jku": ATTACKER_KEYS, "kid": None}},
    "missing aud": {"id_token_claims": {"aud": None}},
    "aud list with another app": {"id_token_claims": {"aud": ["5f0d1c2e-0000-4000-8000-00000000d3e0",
                                                              "00000000-0000-0000-0000-000000000001"]}},
    "azp not ours": {"id_token_claims": {"azp": "00000000-0000-0000-0000-000000000001"}},
    "missing iss": {"id_token_claims": {"iss": None}},
    "iss of the template, not the tenant": {"id_token_claims": {
        "iss": "https://login.microsoftonline.com/{tenantid}/v2.0"}},
    "iss on another host": {"id_token_claims": {"iss": f"https://login.example.net/{NORTHWIND_TID}/v2.0"}},
    "missing sub": {"id_token_claims": {"sub": None}},
    "missing iat": {"id_token_claims": {"iat": None}},
    "missing exp": {"id_token_claims": {"exp": None}},
    "missing oid": {"id_token_claims": {"oid": None}},
    "missing tid": {"id_token_claims": {"tid": None}},
    "v1 token": {"id_token_claims": {"ver": "1.0"}},
    "nonce as a number": {"id_token_claims": {"nonce": 12345}},
    "alg RS512": {"id_token_header": {"alg": "RS512"}},
    "not a JWT": {"token_response": (200, '{"token_type":"Bearer","access_token":"a.b.c","id_token":"garbage",'
                                          '"client_info":"e30"}', "application/json")},
}


@pytest.mark.parametrize("name", REFUSED)
def test_forged_or_wrong_id_token_is_refused(app, client, emulator, active, name):  # noqa: F811
    emulator.faults.update(REFUSED[name])
    before = sign_in_state(app)
    resp = sso_sign_in(client, LENA)
    assert resp.status_code in (401, 502), (name, resp.status_code, resp.data[:300])
    assert b"Error %d" % resp.status_code in resp.data  # the error page, not a stack trace
    assert sign_in_state(app) == before and not signed_in(client)
    with app.app_context():
        event = db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id.desc())).scalars().first()
        assert (event.action, event.outcome) == ("sign_in", "failure")


def test_keys_offered_in_the_header_are_never_fetched(client, emulator, active):  # noqa: F811
    emulator.faults.update({"id_token_alg": "foreign-key", "id_token_header": {"jku": ATTACKER_KEYS,
                                                                               "x5u": ATTACKER_KEYS}})
    emulator.requests.clear()
    assert sso_sign_in(client, LENA).status_code == 401
    assert not [url for _, url, _ in emulator.requests if "attacker.example" in url]


def test_missing_kid_is_accepted_when_exactly_one_key_is_published(client, emulator, active):  # noqa: F811
    emulator.faults["id_token_header"] = {"kid": None}
    assert sso_sign_in(client, LENA).status_code == 303
    assert signed_in(client)


def test_missing_kid_is_refused_when_several_keys_are_published(app, client, emulator, northwind):
    emulator.rotate_signing_key()  # the JWKS now has two keys
    emulator.faults["id_token_header"] = {"kid": None}
    resp = activate_sso(client)
    assert resp.status_code == 401 and b"could not be verified" in resp.data
    with app.app_context():
        assert db.session.execute(db.select(AuditEvent.detail).order_by(AuditEvent.id.desc())).scalar() == \
            "id_token_no_kid"


def test_unparseable_extra_keys_in_the_jwks_are_ignored(client, emulator, active):  # noqa: F811
    emulator.rotate_signing_key()  # the portal must refetch, and meets the junk while doing so
    emulator.faults["jwks_extra_keys"] = [
        {"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"}, {"kty": "EC", "kid": "ec", "crv": "P-256"},
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}, "not an object", {"kid": 7}, None]
    assert sso_sign_in(client, LENA).status_code == 303 and signed_in(client)


def test_jwks_with_only_unusable_keys_refuses_cleanly(app, client, emulator, northwind):
    emulator.faults["jwks_keys"] = [{"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"}, "junk"]
    before = sign_in_state(app)
    resp = activate_sso(client)
    assert resp.status_code == 401 and b"could not be verified" in resp.data
    assert sign_in_state(app)[3] == before[3]  # organisation still unbound


def test_unknown_kid_refetches_at_most_ten_times_a_minute(app, client, emulator, active):  # noqa: F811
    app.config["RATELIMIT_SIGN_IN_PER_ACCOUNT"] = "100 per minute"  # more sign-ins than a person makes
    emulator.faults["id_token_alg"] = "unpublished-kid"
    emulator.requests.clear()
    for _ in range(13):
        assert sso_sign_in(client, LENA).status_code == 401
    fetches = [url for method, url, _ in emulator.requests if url.endswith("/discovery/v2.0/keys")]
    assert len(fetches) == 10  # the keys were cached by the activation; then one refetch per kid, capped
    emulator.faults.clear()
    assert sso_sign_in(client, LENA).status_code == 303  # known kids still work while refetching is capped


def test_key_rotated_just_before_signing_is_fetched_once(client, emulator, active):  # noqa: F811
    emulator.rotate_signing_key()
    emulator.requests.clear()
    assert sso_sign_in(client, LENA).status_code == 303
    assert len([u for _, u, _ in emulator.requests if u.endswith("/discovery/v2.0/keys")]) == 1
    from helpers import sign_out
    sign_out(client)
    emulator.requests.clear()
    assert sso_sign_in(client, LENA).status_code == 303
    assert not [u for _, u, _ in emulator.requests if u.endswith("/discovery/v2.0/keys")]  # cached now


@pytest.mark.parametrize("issuer", [
    "https://evil.example/{tenantid}/v2.0",
    "https://login.microsoftonline.com/{tenantid}/v2.0/",
    f"https://login.microsoftonline.com/{NORTHWIND_TID}/v2.0",
    "https://sts.windows.net/{tenantid}/",
])
def test_discovery_issuer_must_match_the_authority(app, client, emulator, northwind, issuer):
    emulator.faults["discovery"] = {"issuer": issuer}
    before = sign_in_state(app)
    password_sign_in(client, "admin@northwind.example")
    consent = submit(client, client.get("/settings/security"), "Activate SSO")
    resp = submit(client, consent, "Continue to Microsoft")  # checked before the browser is sent anywhere
    assert resp.status_code == 502, resp.data[:300]
    assert b"configuration" in resp.data
    assert sign_in_state(app)[3] == before[3]
    emulator.faults.pop("discovery")  # Microsoft's answer is right again: asked for again, and accepted
    consent = submit(client, client.get("/settings/security"), "Activate SSO")
    go = submit(client, consent, "Continue to Microsoft")
    assert go.status_code == 303
    assert through_microsoft(client, go, user="admin@northwind.example").status_code == 303


def test_emulator_fault_switches_used_here_do_what_they_say(app, emulator):
    """The two switches this file added: a header-borne key, and a JWKS replaced wholesale."""
    from emulator import tokens
    token = tokens.sign_token(emulator.keys, {"sub": "x"}, alg_fault="embedded-jwk")
    header = jwt.get_unverified_header(token)
    offered = jwt.PyJWK({**header["jwk"], "kid": "x"}, algorithm="RS256").key
    assert jwt.decode(token, offered, algorithms=["RS256"])["sub"] == "x"  # really signed by the offered key
    http = app.extensions["entra"].http
    emulator.faults["jwks_keys"] = [{"kid": "only"}]
    assert http.get("https://login.microsoftonline.com/organizations/discovery/v2.0/keys").json() == \
        {"keys": [{"kid": "only"}]}
