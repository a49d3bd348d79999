"""The emulator's admin page for a tenant: Provisioning (Tenant URL, secret token, scope, externalId's source,
who is assigned, disabled or deleted, group members, and **Provision now**, which runs one cycle and shows its
summary)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, url_for

from .answers import current
from .pages import csrf_ok
from .provisioning import EXTERNAL_ID_SOURCES, SCOPES, USER_STATES

bp = Blueprint("admin", __name__)


@bp.route("/<tenant>/provisioning", methods=["GET", "POST"])
def provisioning(tenant: str):
    emu = current()
    found = emu.directory.tenant(tenant)
    if found is None:
        abort(404)
    if request.method == "POST":
        if not csrf_ok():
            abort(400, "The form expired. Open the page again.")
        error = _save(found)
        if error:
            return _page(found, error=error), 400
        if request.form.get("action") == "provision":
            if not emu.store.provisioning(found.tid)["tenant_url"]:
                return _page(found, error="Enter the Tenant URL and secret token first."), 400
            emu.provision(found.tid)
        return redirect(url_for(".provisioning", tenant=found.tid), 303)
    return _page(found)


def _save(tenant) -> str | None:
    """Store the form's credentials, scope, assignments, user states and group members."""
    emu, form = current(), request.form
    url = form.get("tenant_url", "").strip()
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        return "The Tenant URL must be an http(s) address, such as https://portal.example.com/scim/v2."
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
    ids = {u.oid for u in tenant.users} | {g.gid for g in tenant.groups}
    emu.set_tenant(tenant.tid, assigned=[i for i in form.getlist("assigned") if i in ids])
    for user in tenant.users:
        state = form.get(f"state-{user.oid}")
        if state in USER_STATES:
            emu.set_user_state(user.oid, state)
    for group in tenant.groups:
        if f"members-{group.gid}-sent" in form:
            members = set(form.getlist(f"members-{group.gid}"))
            emu.set_group_members(group.gid, [u.oid for u in tenant.users if u.oid in members])
    return None


def _page(tenant, error: str | None = None):
    emu = current()
    config = emu.store.provisioning(tenant.tid)
    assigned = set(emu.tenant_settings(tenant.tid)["assigned"])
    return render_template("provisioning.html", title=f"Provisioning · {tenant.name}", tenant=tenant,
                           config=config, scope=config["scope"] or "assigned", assigned=assigned,
                           external_id=config["external_id"] or "objectId",
                           states={u.oid: emu.user_state(u.oid) for u in tenant.users},
                           members={g.gid: set(emu.group_members(g)) for g in tenant.groups},
                           user_states=USER_STATES, error=error)
