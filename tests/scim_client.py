"""Entra's side of the SCIM endpoint in tests: a client that sends the bearer token and SCIM JSON, and the bodies
Entra sends (its quirks included). Used by the `scim` fixture (conftest.py)."""
from __future__ import annotations

import json
from typing import Any

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


class ScimClient:
    """Requests to /scim/v2/ with the organisation's token, as Entra's provisioning service sends them."""

    def __init__(self, client, token: str) -> None:
        self.client, self.token = client, token

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: str | None = None,
                headers: dict | None = None):
        sent = {"Authorization": f"Bearer {token if token is not None else self.token}", "Accept": SCIM_JSON,
                **(headers or {})}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", SCIM_JSON)
        return self.client.open("/scim/v2" + path, method=method, data=data, headers=sent)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, *operations: dict, **kw):
        return self.request("PATCH", path, patch_body(*operations), **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)

    def create_user(self, user_name: str, external_id: str | None = None, **attributes) -> dict:
        resp = self.post("/Users", user_body(user_name, external_id, **attributes))
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.json

    def create_group(self, name: str, external_id: str | None = None, members: list[str] = ()) -> dict:
        body = {"schemas": [GROUP_SCHEMA], "displayName": name, "members": [{"value": m} for m in members]}
        if external_id:
            body["externalId"] = external_id
        resp = self.post("/Groups", body)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.json

    def find(self, resource: str, expression: str, extra: str = "") -> list[dict]:
        resp = self.client.get(f"/scim/v2/{resource}", query_string={"filter": expression, **_args(extra)},
                               headers={"Authorization": f"Bearer {self.token}"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.json["Resources"]


def _args(extra: str) -> dict:
    return dict(part.split("=", 1) for part in extra.split("&") if part)


def user_body(user_name: str, external_id: str | None = None, **attributes) -> dict:
    """A POST /Users body like Entra's with its default mappings (`active` a JSON boolean)."""
    body = {"schemas": [USER_SCHEMA, ENTERPRISE], "userName": user_name, "active": True,
            "displayName": "Lena Fischer", "title": "Sales lead",
            "name": {"formatted": "Lena Fischer", "givenName": "Lena", "familyName": "Fischer"},
            "emails": [{"type": "work", "value": user_name, "primary": True}],
            "phoneNumbers": [{"type": "mobile", "value": "+49 30 1234567"}],
            "addresses": [{"type": "work", "streetAddress": "Hauptstraße 1", "postalCode": "10115"}],
            ENTERPRISE: {"department": "Sales", "employeeNumber": "E-1042"},
            "meta": {"resourceType": "User"}}
    if external_id is not None:
        body["externalId"] = external_id
    body.update(attributes)
    return body


def patch_body(*operations: dict) -> dict:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


def is_scim_error(resp, status: int, scim_type: str | None = None) -> bool:
    body = resp.json or {}
    return (resp.status_code == status and resp.mimetype == SCIM_JSON and body.get("schemas") == [ERROR_SCHEMA]
            and body.get("status") == str(status) and body.get("scimType") == scim_type)
