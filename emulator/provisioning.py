"""Entra's provisioning service: one cycle of SCIM 2.0 requests to an app's Tenant URL.

It sends what Entra sends with its default attribute mappings and without the `aadOptscim062020` flag
(Microsoft's "Develop and plan provisioning for a SCIM endpoint" and "Known issues ... SCIM 2.0 protocol
compliance"): users are looked up with `GET /Users?filter=userName eq "..."`, then created (POST) or updated
(PATCH of what differs); PATCH `op` values are capitalised (`Replace`, `Add`, `Remove`) and booleans are the
strings "True"/"False"; a user disabled, deleted (soft) or out of scope is PATCHed `active` "False", a
hard-deleted one DELETEd. Groups are looked up with `filter=displayName eq "..."&excludedAttributes=members`,
created without members, and their members added or removed by PATCH (a removal names the member in `value`).
"""
from __future__ import annotations

import datetime
import re
from typing import TYPE_CHECKING
from urllib.parse import quote

import requests

if TYPE_CHECKING:
    from . import Emulator
    from .directory import Group, Tenant, User

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_JSON = "application/scim+json"
USER_STATES = ("enabled", "disabled", "deleted")  # deleted = hard-deleted (Entra sends DELETE)
SCOPES = ("assigned", "all")  # Entra's "Sync only assigned users and groups" / "Sync all users and groups"
# The source of externalId: Entra's own default mapping is mailNickname (the same value Graph's /me gives); the
# emulator's default is objectId, which the portal's set-up recommends (it survives renames).
EXTERNAL_ID_SOURCES = ("objectId", "mailNickname")
TIMEOUT = 10


class CycleError(Exception):
    """A request of the cycle failed: what was sent and what came back."""


def user_attributes(user: "User", external_id: str = "objectId") -> dict:
    """The default mappings, as SCIM attribute paths: userName = UPN, externalId, mail, names, phones..."""
    p = user.profile
    attributes = {
        "userName": user.upn,
        "externalId": user.oid if external_id == "objectId" else user.mail_nickname,
        "displayName": p.get("displayName"),
        "title": p.get("jobTitle"),
        'emails[type eq "work"].value': user.mail,
        "name.givenName": p.get("givenName"),
        "name.familyName": p.get("surname"),
        'phoneNumbers[type eq "work"].value': (p.get("businessPhones") or [None])[0],
        'phoneNumbers[type eq "mobile"].value': p.get("mobilePhone"),
        'addresses[type eq "work"].streetAddress': p.get("streetAddress"),
        'addresses[type eq "work"].postalCode': p.get("postalCode"),
        f"{ENTERPRISE_SCHEMA}:department": p.get("department"),
        f"{ENTERPRISE_SCHEMA}:employeeNumber": p.get("employeeId"),
    }
    return {path: value for path, value in attributes.items() if value}


def user_resource(user: "User", external_id: str = "objectId") -> dict:
    """The body of Entra's POST /Users (here `active` is a JSON boolean; only PATCH sends strings)."""
    a = user_attributes(user, external_id)
    body = {"schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "externalId": a["externalId"], "userName": user.upn,
            "active": True, "displayName": a.get("displayName"), "title": a.get("title"),
            "meta": {"resourceType": "User"}}
    for attribute, sub in (("emails", "value"), ("phoneNumbers", "value")):
        entries = [{"type": kind, sub: a[f'{attribute}[type eq "{kind}"].{sub}']}
                   for kind in ("work", "mobile") if f'{attribute}[type eq "{kind}"].{sub}' in a]
        if entries:
            body[attribute] = entries
    address = {k: a[f'addresses[type eq "work"].{k}'] for k in ("streetAddress", "postalCode")
               if f'addresses[type eq "work"].{k}' in a}
    if address:
        body["addresses"] = [{"type": "work", **address}]
    if "emails" in body:
        body["emails"][0]["primary"] = True
    name = {k: a[f"name.{k}"] for k in ("givenName", "familyName") if f"name.{k}" in a}
    if name:
        body["name"] = {"formatted": " ".join(name.values()), **name}
    extension = {k: a[f"{ENTERPRISE_SCHEMA}:{k}"] for k in ("department", "employeeNumber")
                 if f"{ENTERPRISE_SCHEMA}:{k}" in a}
    if extension:
        body[ENTERPRISE_SCHEMA] = extension
    return {k: v for k, v in body.items() if v is not None}


def read_attribute(resource: dict, path: str):
    """The value at one of user_attributes' paths in a resource the app returned (None when absent)."""
    filtered = re.fullmatch(r'(\w+)\[type eq "(\w+)"\]\.(\w+)', path)
    if filtered:
        attribute, kind, sub = filtered.groups()
        entries = resource.get(attribute) or []
        return next((e.get(sub) for e in entries if isinstance(e, dict) and e.get("type") == kind), None)
    if path.startswith(ENTERPRISE_SCHEMA + ":"):
        return (resource.get(ENTERPRISE_SCHEMA) or {}).get(path[len(ENTERPRISE_SCHEMA) + 1:])
    node = resource
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def is_active(resource: dict) -> bool:
    """An app's `active`, read as Entra does (a boolean, or the strings it sends itself)."""
    value = resource.get("active", True)
    return value if isinstance(value, bool) else str(value).lower() == "true"


def patch_body(operations: list[dict]) -> dict:
    return {"schemas": [PATCH_SCHEMA], "Operations": operations}


class Cycle:
    """One provisioning cycle for one tenant; `summary` says what happened."""

    def __init__(self, emu: "Emulator", tenant: "Tenant", session: requests.Session) -> None:
        self.emu, self.tenant, self.session = emu, tenant, session
        config = emu.store.provisioning(tenant.tid)
        self.base = (config["tenant_url"] or "").rstrip("/")
        self.token = config["token"] or ""
        self.scope = config["scope"] or "assigned"
        self.external_id = config["external_id"] or "objectId"
        self.summary = {"started": _now(emu), "users": {"created": 0, "updated": 0, "disabled": 0, "deleted": 0,
                                                       "unchanged": 0},
                        "groups": {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0},
                        "requests": 0, "errors": []}
        # What earlier cycles provisioned, read once and written back once at the end (one transaction, not
        # one per user: an initial cycle of thousands of users would otherwise wait on a commit per user).
        self.known = {kind: emu.store.provisioned(tenant.tid, kind) for kind in ("user", "group")}
        self._changes: dict[tuple[str, str], tuple[str | None, list[str] | None]] = {}
        self._scope: tuple[set[str], list["Group"]] | None = None

    # -- HTTP ---------------------------------------------------------------------
    def _send(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        self.summary["requests"] += 1
        headers = {"Authorization": f"Bearer {self.token}", "Accept": SCIM_JSON}
        kwargs = {}
        if body is not None:
            headers["Content-Type"] = SCIM_JSON
            kwargs["json"] = body
        try:
            response = self.session.request(method, self.base + path, headers=headers, timeout=TIMEOUT,
                                            allow_redirects=False, **kwargs)
        except requests.RequestException as e:
            raise CycleError(f"{method} {path}: {type(e).__name__}") from None
        if response.status_code >= 400:
            raise CycleError(f"{method} {path}: {response.status_code} {_scim_error(response)}".rstrip())
        return response

    def _json(self, response: requests.Response, what: str) -> dict:
        try:
            data = response.json()
        except ValueError:
            raise CycleError(f"{what}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise CycleError(f"{what}: the answer is not a JSON object")
        return data

    def _find(self, resource: str, attribute: str, value: str, extra: str = "") -> dict | None:
        """GET /Users or /Groups with `filter=attribute eq "value"`: the first resource or None."""
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        expression = f'{attribute} eq "{escaped}"'
        query = f"filter={quote(expression, safe='')}{extra}"
        data = self._json(self._send("GET", f"/{resource}?{query}"), f"GET /{resource}")
        found = data.get("Resources") or []
        return found[0] if found and isinstance(found[0], dict) else None

    # -- the cycle ------------------------------------------------------------------
    def run(self) -> dict:
        try:
            users = self._users_in_scope()
            for user in self.tenant.users:
                self._guarded(self._sync_user, user, user.oid in users)
            for group in self.tenant.groups:
                self._guarded(self._sync_group, group)
        finally:
            self.emu.store.set_provisioned_many(self.tenant.tid, [
                (kind, oid, scim_id, members) for (kind, oid), (scim_id, members) in self._changes.items()])
        self.summary["finished"] = _now(self.emu)
        return self.summary

    def _remember(self, kind: str, oid: str, scim_id: str | None, members: list[str] | None = None) -> None:
        """Record (or, with scim_id None, forget) the app's id of a user or group."""
        if scim_id is None:
            self.known[kind].pop(oid, None)
        else:
            self.known[kind][oid] = {"scim_id": scim_id, "members": sorted(members or [])}
        self._changes[(kind, oid)] = (scim_id, members)

    def _guarded(self, step, *args) -> None:
        try:
            step(*args)
        except CycleError as e:
            self.summary["errors"].append(str(e))

    def _in_scope(self) -> tuple[set[str], list["Group"]]:
        """(user oids, groups) in scope, read once a cycle: every user and group, or those assigned (or holding an
        app role), users directly or through an assigned group."""
        if self._scope is None:
            assigned = self.emu.assigned_ids(self.tenant.tid)
            groups = [g for g in self.tenant.groups if self.scope == "all" or g.id in assigned]
            if self.scope == "all":
                users = {u.oid for u in self.tenant.users}
            else:
                for group in groups:
                    assigned |= set(self.emu.group_members(group))
                users = {u.oid for u in self.tenant.users if u.oid in assigned}
            self._scope = users, groups
        return self._scope

    def _groups_in_scope(self) -> list["Group"]:
        return self._in_scope()[1]

    def _users_in_scope(self) -> set[str]:
        return self._in_scope()[0]

    def _sync_user(self, user: "User", in_scope: bool) -> None:
        known = self.known["user"].get(user.oid)
        state = self.emu.user_state(user.oid)
        if state == "deleted":
            if known:  # Entra deletes only what it provisioned
                self._send("DELETE", f"/Users/{known['scim_id']}")
                self._remember("user", user.oid, None)
                self.summary["users"]["deleted"] += 1
            return
        if not in_scope or state == "disabled":
            if not known:
                return  # never provisioned: nothing to disable
            existing = self._find("Users", "userName", user.upn)
            if existing and is_active(existing):
                self._send("PATCH", f"/Users/{existing['id']}",
                           patch_body([{"op": "Replace", "path": "active", "value": "False"}]))
                self.summary["users"]["disabled"] += 1
            else:
                self.summary["users"]["unchanged"] += 1
            return
        existing = self._find("Users", "userName", user.upn)
        if existing is None:
            created = self._json(self._send("POST", "/Users", user_resource(user, self.external_id)), "POST /Users")
            if not created.get("id"):
                raise CycleError("POST /Users: the answer has no id")
            self._remember("user", user.oid, str(created["id"]))
            self.summary["users"]["created"] += 1
            return
        # Entra adds what the app does not have yet and replaces what differs.
        operations = [{"op": "Add" if read_attribute(existing, path) is None else "Replace", "path": path,
                       "value": value}
                      for path, value in user_attributes(user, self.external_id).items()
                      if read_attribute(existing, path) != value]
        if not is_active(existing):
            operations.append({"op": "Replace", "path": "active", "value": "True"})
        self._remember("user", user.oid, str(existing["id"]))
        if operations:
            self._send("PATCH", f"/Users/{existing['id']}", patch_body(operations))
            self.summary["users"]["updated"] += 1
        else:
            self.summary["users"]["unchanged"] += 1

    def _sync_group(self, group: "Group") -> None:
        known = self.known["group"].get(group.id)
        if group not in self._groups_in_scope():
            if known:
                self._send("DELETE", f"/Groups/{known['scim_id']}")
                self._remember("group", group.id, None)
                self.summary["groups"]["deleted"] += 1
            return
        # Members the app can know: provisioned users still in scope and enabled.
        users = self.known["user"]
        in_scope = self._users_in_scope()
        wanted = {users[oid]["scim_id"] for oid in self.emu.group_members(group)
                  if oid in users and oid in in_scope and self.emu.user_state(oid) == "enabled"}
        existing = self._find("Groups", "displayName", group.name, "&excludedAttributes=members")
        if existing is None:
            created = self._json(self._send("POST", "/Groups", {
                "schemas": [GROUP_SCHEMA], "externalId": group.id, "displayName": group.name,
                "members": [], "meta": {"resourceType": "Group"}}), "POST /Groups")
            if not created.get("id"):
                raise CycleError("POST /Groups: the answer has no id")
            scim_id, had = str(created["id"]), set()
            self.summary["groups"]["created"] += 1
        else:
            scim_id = str(existing["id"])
            had = set(known["members"]) if known and known["scim_id"] == scim_id else set()
        operations = []
        if existing is not None and existing.get("displayName") != group.name:
            operations.append({"op": "Replace", "path": "displayName", "value": group.name})
        if wanted - had:
            operations.append({"op": "Add", "path": "members",
                               "value": [{"value": v} for v in sorted(wanted - had)]})
        if had - wanted:
            operations.append({"op": "Remove", "path": "members",
                               "value": [{"value": v} for v in sorted(had - wanted)]})
        if operations:
            self._send("PATCH", f"/Groups/{scim_id}", patch_body(operations))
            if existing is not None:
                self.summary["groups"]["updated"] += 1
        elif existing is not None:
            self.summary["groups"]["unchanged"] += 1
        self._remember("group", group.id, scim_id, sorted(wanted))


def _scim_error(response: requests.Response) -> str:
    """The scimType and detail of a SCIM error answer, if it is one (shortened)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k]) for k in ("scimType", "detail") if data.get(k)]
    return " ".join(parts)[:200]


def _now(emu: "Emulator") -> str:
    stamp = datetime.datetime.fromtimestamp(emu.now(), datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%SZ")
