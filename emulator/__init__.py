"""An Entra ID (v2) + Microsoft Graph emulator for demo mode and tests.

The portal talks to it through `Emulator.mount(session)` (back channel) and serves
`Emulator.wsgi` under /_entra for the browser pages (sign-in, consent, admin consent).
"""
from __future__ import annotations

import os
import secrets
import threading
import time
import uuid

import requests

from .app import create_app
from .directory import Directory, Group, Tenant, User, build_directory, numbered_user
from .provisioning import EXTERNAL_ID_SOURCES, SCOPES, USER_STATES, Cycle
from .store import Store
from .tokens import KeyRing, new_signing_key
from .transport import GRAPH_HOST, LOGIN_HOST, EmulatorAdapter

__all__ = ["Emulator", "Directory", "Group", "Tenant", "User"]

# The app roles an app registration defines when its client entry names none: the portal's admin role.
DEFAULT_APP_ROLES = ("Portal.Admin",)


class Emulator:
    """One emulated Entra ID + Graph, with its state in `instance_path`."""

    def __init__(self, instance_path: str, *, browser_url: str, clients: dict[str, dict],
                 login_url: str = f"https://{LOGIN_HOST}", graph_url: str = f"https://{GRAPH_HOST}",
                 max_content_length: int | None = 64 * 1024) -> None:
        os.makedirs(instance_path, exist_ok=True)
        self.instance_path = instance_path
        self.browser_url = browser_url.rstrip("/")
        # Where the back channel reaches it: issuer, token and keys (login_url), Graph (graph_url + /v1.0).
        # Microsoft's own hosts when mounted in-process; its own URL when it serves HTTPS (python -m emulator).
        self.login_url = login_url.rstrip("/")
        self.graph_url = graph_url.rstrip("/")
        self.clients = {
            cid: {"secret": c["secret"], "redirect_uris": list(c.get("redirect_uris", [])),
                  "name": c.get("name") or cid,
                  "app_roles": list(c.get("app_roles", DEFAULT_APP_ROLES)),
                  # The app registration's Front-channel logout URL: the sign-out page frames it (sid, iss).
                  "front_channel_logout_url": c.get("front_channel_logout_url")}
            for cid, c in clients.items()}
        self.directory: Directory = build_directory()
        self.requests: list[tuple] = []
        # Test switches that make the emulator misbehave: id_token_claims (set/None-remove claims),
        # id_token_header (set/None-remove header fields), id_token_alg (none, HS256-public, foreign-key,
        # unpublished-kid, embedded-jwk, consumer-key: a key the JWKS then publishes under the consumer
        # issuer), token_response ((status, body, type)), graph_me, graph_status, timeout (URL prefixes),
        # slow ({URL prefix: seconds}, cut at the caller's timeout), discovery (fields), jwks_extra_keys
        # (appended), jwks_keys (replaces the published keys entirely).
        self.faults: dict = {}
        self.time_offset: float = 0.0
        self.store = Store(os.path.join(instance_path, "entra-emulator.sqlite"))
        self.keys = KeyRing(self.store)
        self._lock = threading.Lock()
        if not self.store.signing_keys():
            # Another process may win the race; only_if_empty keeps exactly one first key.
            kid, pem, cert = new_signing_key()
            self.store.add_signing_key(kid, pem, cert, time.time(), only_if_empty=True)
        self.secret_key = self.store.get_or_set_meta("flask_secret_key",
                                                     lambda: secrets.token_hex(32))
        self.max_content_length = max_content_length  # bodies beyond it are refused (413) unread
        # The provisioning service's outbound session (tests mount an app's WSGI app on it).
        self.provisioning_session = requests.Session()
        self.wsgi = create_app(self)

    def now(self) -> float:
        """The emulator's clock: wall time plus `time_offset` (for expiry tests)."""
        return time.time() + self.time_offset

    def mount(self, session: requests.Session) -> requests.Session:
        """Route the session's calls to Entra ID and Graph into this emulator."""
        adapter = EmulatorAdapter(self)
        session.mount(f"https://{LOGIN_HOST}/", adapter)
        session.mount(f"https://{GRAPH_HOST}/", adapter)
        return session

    def rotate_signing_key(self) -> str:
        """Make a new current signing key; the JWKS keeps publishing the old ones."""
        kid, pem, cert = new_signing_key()
        self.store.add_signing_key(kid, pem, cert, time.time())
        return kid

    def set_tenant(self, tid: str, *, users_may_consent: bool | None = None,
                   assignment_required: bool | None = None,
                   assigned: list[str] | None = None) -> None:
        """Change a tenant's switches (None leaves a switch unchanged); `assigned` lists user and group oids."""
        tenant = self.directory.tenant(tid)
        if tenant is None:
            raise KeyError(f"unknown tenant {tid!r}")
        self.store.update_tenant_settings(tenant.tid, users_may_consent=users_may_consent,
                                          assignment_required=assignment_required,
                                          assigned=assigned)

    def tenant_settings(self, tid: str) -> dict:
        """The tenant's effective switches: directory defaults overridden by the store."""
        tenant = self.directory.tenant(tid)
        settings = {"users_may_consent": tenant.users_may_consent if tenant else True,
                    "assignment_required": tenant.assignment_required if tenant else False,
                    "assigned": []}
        settings.update(self.store.tenant_settings(tenant.tid if tenant else tid))
        return settings

    def has_admin_consent(self, tid: str, client_id: str) -> bool:
        """True when an admin of the tenant consented for the whole organisation."""
        tenant = self.directory.tenant(tid)
        return self.store.has_admin_consent(tenant.tid if tenant else tid, client_id)

    def _principal(self, principal: str) -> tuple[str, str, str]:
        """(tid, principal id, kind) for a user (UPN or oid) or a group (id or name, `tenant` domain or GUID
        after a slash when names repeat: "Sales team/northwind.example")."""
        user = self.directory.user_by_upn(principal) or self.directory.user_by_oid(principal)
        if user is not None:
            return user.tid, user.oid, "user"
        name, _, tenant = principal.partition("/")
        for t in ([self.directory.tenant(tenant)] if tenant else self.directory.tenants):
            group = t and self.directory.group(t.tid, name)
            if group:
                return t.tid, group.id, "group"
        raise KeyError(f"no user or group {principal!r} in the directory")

    def _client_role(self, client_id: str | None, role: str) -> str:
        if client_id is None:
            if len(self.clients) != 1:
                raise ValueError("several apps are registered: name the client_id")
            client_id = next(iter(self.clients))
        if role not in self.clients[client_id]["app_roles"]:
            raise ValueError(f"app {client_id!r} defines no app role {role!r}")
        return client_id

    def assign_app_role(self, principal: str, role: str = "Portal.Admin", *, client_id: str | None = None,
                        assigned: bool = True) -> None:
        """Assign an app role to a user or a group in its tenant (Enterprise applications -> Users and groups)."""
        client_id = self._client_role(client_id, role)
        tid, principal_id, _ = self._principal(principal)
        self.store.set_app_role_assignment(tid, client_id, principal_id, role, assigned)

    def unassign_app_role(self, principal: str, role: str = "Portal.Admin", *,
                          client_id: str | None = None) -> None:
        self.assign_app_role(principal, role, client_id=client_id, assigned=False)

    def roles_of(self, user: User, client_id: str) -> list[str]:
        """The app-role values the user holds in the app, directly or through a group (the `roles` claim)."""
        ids = {user.oid} | {g.id for g in self.groups_of(user)}
        defined = self.clients.get(client_id, {}).get("app_roles", [])
        held = {role for pid, role in self.store.app_role_assignments(user.tid, client_id) if pid in ids}
        return [role for role in defined if role in held]
    # -- the directory's changes and the provisioning service ------------------------
    def user_state(self, oid: str) -> str:
        """"enabled", "disabled" (account disabled) or "deleted" (hard-deleted)."""
        return self.store.user_state(oid) or "enabled"

    def set_user_state(self, oid: str, state: str) -> None:
        if self.directory.user_by_oid(oid) is None:
            raise KeyError(f"unknown user {oid!r}")
        if state not in USER_STATES:
            raise ValueError(f"state must be one of {USER_STATES}")
        self.store.set_user_state(oid, state)

    def assigned_ids(self, tid: str) -> set[str]:
        """Users and groups assigned to the app: the `assigned` switch and every app-role assignment."""
        ids = set(self.tenant_settings(tid)["assigned"])
        for client_id in self.clients:
            ids |= {pid for pid, _ in self.store.app_role_assignments(tid, client_id)}
        return ids

    def is_assigned(self, user: User) -> bool:
        """True when the app is assigned to the user, directly or through one of their groups."""
        ids = self.assigned_ids(user.tid)
        return user.oid in ids or any(g.id in ids for g in self.groups_of(user))

    def group_members(self, group: Group) -> list[str]:
        """The group's member oids: the directory's, unless changed with set_group_members."""
        stored = self.store.group_members(group.id)
        return list(group.members) if stored is None else stored

    def groups_of(self, user: User) -> list[Group]:
        """The user's groups, with the members as changed by set_group_members."""
        tenant = self.directory.tenant(user.tid)
        return [g for g in (tenant.groups if tenant else []) if user.oid in self.group_members(g)]

    def set_group_members(self, gid: str, oids: list[str]) -> None:
        tenant = next((t for t in self.directory.tenants if any(g.id == gid for g in t.groups)), None)
        if tenant is None:
            raise KeyError(f"unknown group {gid!r}")
        if not set(oids) <= {u.oid for u in tenant.users}:
            raise ValueError("members must be users of the group's tenant")
        self.store.set_group_members(gid, list(oids))

    def add_users(self, tid: str, count: int, *, first: int = 1) -> list[User]:
        """Add `count` generated members (numbered from `first`) to the tenant's directory, in this process only
        (the demo directory is built in memory: for tests and benchmarks that need many users)."""
        tenant = self.directory.tenant(tid)
        if tenant is None:
            raise KeyError(f"unknown tenant {tid!r}")
        known = {u.oid for u in tenant.users}
        added = [u for u in (numbered_user(tenant, n) for n in range(first, first + count)) if u.oid not in known]
        tenant.users.extend(added)
        return added

    def add_group(self, tid: str, name: str, members: list[str] = ()) -> Group:
        """Add a security group to the tenant's directory, in this process only (as add_users)."""
        tenant = self.directory.tenant(tid)
        if tenant is None:
            raise KeyError(f"unknown tenant {tid!r}")
        if self.directory.group(tenant.tid, name) is not None:
            raise ValueError(f"the tenant has a group {name!r} already")
        group = Group(str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator:{tenant.tid}:group:{name}")), name, list(members))
        tenant.groups.append(group)
        return group

    def configure_provisioning(self, tid: str, *, tenant_url: str | None = None, token: str | None = None,
                               scope: str | None = None, external_id: str | None = None) -> None:
        """Admin credentials (Tenant URL, secret token), scope and externalId's source; None leaves a field as it is."""
        tenant = self.directory.tenant(tid)
        if tenant is None:
            raise KeyError(f"unknown tenant {tid!r}")
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        if external_id is not None and external_id not in EXTERNAL_ID_SOURCES:
            raise ValueError(f"external_id must be one of {EXTERNAL_ID_SOURCES}")
        self.store.update_provisioning(tenant.tid, tenant_url=tenant_url, token=token, scope=scope,
                                       external_id=external_id)

    def provision(self, tid: str) -> dict:
        """Run one provisioning cycle for the tenant through `provisioning_session`; return its summary."""
        tenant = self.directory.tenant(tid)
        if tenant is None:
            raise KeyError(f"unknown tenant {tid!r}")
        with self._lock:  # one cycle at a time, as Entra runs one per app
            summary = Cycle(self, tenant, self.provisioning_session).run()
        self.store.update_provisioning(tenant.tid, last_cycle=summary)
        return summary
