"""Enterprise applications → the app: Users and groups (an administrator of a tenant assigns the app's roles) and
Provisioning (Tenant URL, secret token, scope, externalId's source, who is assigned, disabled or deleted, group
members, and **Provision now**, which runs one cycle and shows its summary)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session

from . import tokens
from .answers import current
from .pages import _csrf_ok, _error_page, _session_user
from .provisioning import EXTERNAL_ID_SOURCES, SCOPES, USER_STATES

bp = Blueprint("admin", __name__)


def _gate(tenant: str, client_id: str):
    """(tenant, client, signed-in admin of that tenant or None, an answer to return at once or None)."""
    emu = current()
    found = emu.directory.tenant(tenant)
    client = emu.clients.get(client_id)
    if found is None or client is None:
        return None, None, None, _error_page(90002 if found is None else 700016,
                                             "No such tenant or application in the demo directory.", status=404)
    user = _session_user()
    admin = user if user is not None and user.tid == found.tid and user.is_admin else None
    if request.method == "POST":
        if not _csrf_ok():
            return found, client, admin, _error_page(
                90015, "The request could not be verified (CSRF token missing or invalid).")
        if request.form.get("step") == "signin":
            chosen = emu.directory.user_by_upn(request.form.get("username", ""))
            if chosen is not None and chosen.tid == found.tid and chosen.is_admin:
                session["user"], session["sid"] = chosen.oid, tokens.new_guid()
            return found, client, admin, redirect(request.script_root + request.path, 303)
    if admin is None:
        return found, client, None, render_template("admin_signin.html", tenant=found, client=client,
                                                     title="Sign in as an administrator")
    return found, client, admin, None


@bp.route("/<tenant>/enterprise-applications/<client_id>/users-and-groups", methods=["GET", "POST"])
def users_and_groups(tenant: str, client_id: str):
    emu = current()
    found, client, admin, answer = _gate(tenant, client_id)
    if answer is not None:
        return answer
    if request.method == "POST":
        principal, role = request.form.get("principal", ""), request.form.get("role", "")
        known = {u.oid for u in found.users} | {g.id for g in found.groups}
        if principal not in known or role not in client["app_roles"]:
            return _error_page(900144, "Choose a user or group of this tenant and one of the app's roles.")
        emu.assign_app_role(principal, role, client_id=client_id, assigned=request.form.get("assign") == "yes")
        return redirect(request.script_root + request.path, 303)
    held = set(emu.store.app_role_assignments(found.tid, client_id))
    principals = ([(u.display_name, u.upn, "User", u.oid) for u in found.users]
                  + [(g.name, f"{len(emu.group_members(g))} members", "Group", g.id) for g in found.groups])
    return render_template("users_and_groups.html", tenant=found, client=client, admin=admin, held=held,
                           principals=principals, title="Users and groups")


@bp.route("/<tenant>/enterprise-applications/<client_id>/provisioning", methods=["GET", "POST"])
def provisioning(tenant: str, client_id: str):
    emu = current()
    found, client, admin, answer = _gate(tenant, client_id)
    if answer is not None:
        return answer
    if request.method == "POST":
        error = _save(found)
        if error:
            return _provisioning_page(found, client_id, admin, error=error), 400
        if request.form.get("action") == "provision":
            if not emu.store.provisioning(found.tid)["tenant_url"]:
                return _provisioning_page(found, client_id, admin,
                                          error="Enter the Tenant URL and secret token first."), 400
            emu.provision(found.tid)
        return redirect(request.script_root + request.path, 303)
    return _provisioning_page(found, client_id, admin)


def _save(tenant) -> str | None:
    """Store the form's credentials, scope, assignments, user states and group members."""
    emu, form = current(), request.form
    url = form.get("tenant_url", "").strip()
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        return "The Tenant URL must be an http(s) address, such as https://portal.example.com/scim/v2."
    if urlsplit(url).query or urlsplit(url).fragment:
        # Entra reads flags such as ?aadOptscim062020 there; the emulator sends only the default requests.
        return "The emulator takes a Tenant URL without a query (flags such as aadOptscim062020 are not emulated)."
    scope = form.get("scope") or None
    if scope is not None and scope not in SCOPES:
        return "Choose a scope."
    external_id = form.get("external_id") or None
    if external_id is not None and external_id not in EXTERNAL_ID_SOURCES:
        return "Choose the source of externalId."
    emu.configure_provisioning(tenant.tid, tenant_url=url or None, token=form.get("token") or None, scope=scope,
                               external_id=external_id)
    if not any(key.startswith("state-") for key in form):
        return None  # a form without the directory's part (the page always sends it): keep the directory
    ids = {u.oid for u in tenant.users} | {g.id for g in tenant.groups}
    emu.set_tenant(tenant.tid, assigned=[i for i in form.getlist("assigned") if i in ids])
    for user in tenant.users:
        state = form.get(f"state-{user.oid}")
        if state in USER_STATES:
            emu.set_user_state(user.oid, state)
    for group in tenant.groups:
        if f"members-{group.id}-sent" in form:
            members = set(form.getlist(f"members-{group.id}"))
            emu.set_group_members(group.id, [u.oid for u in tenant.users if u.oid in members])
    return None


def _provisioning_page(tenant, client_id: str, admin, error: str | None = None):
    emu = current()
    config = emu.store.provisioning(tenant.tid)
    return render_template("provisioning.html", title=f"Provisioning · {tenant.name}", tenant=tenant,
                           client=emu.clients[client_id], admin=admin, config=config, scope=config["scope"] or "assigned",
                           external_id=config["external_id"] or "objectId",
                           assigned=set(emu.tenant_settings(tenant.tid)["assigned"]),
                           # Principals holding one of the app's roles are assigned too (Users and groups).
                           role_assigned={pid for pid, _ in emu.store.app_role_assignments(tenant.tid, client_id)},
                           states={u.oid: emu.user_state(u.oid) for u in tenant.users},
                           members={g.id: set(emu.group_members(g)) for g in tenant.groups},
                           user_states=USER_STATES, error=error)
