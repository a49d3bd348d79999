"""Enterprise applications → the app → Users and groups: an administrator of a tenant assigns the app's roles."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session

from . import tokens
from .answers import current
from .pages import _csrf_ok, _error_page, _session_user

bp = Blueprint("admin", __name__)


@bp.route("/<tenant>/enterprise-applications/<client_id>/users-and-groups", methods=["GET", "POST"])
def users_and_groups(tenant: str, client_id: str):
    emu = current()
    found = emu.directory.tenant(tenant)
    client = emu.clients.get(client_id)
    if found is None or client is None:
        return _error_page(90002 if found is None else 700016,
                           "No such tenant or application in the demo directory.", status=404)
    user = _session_user()
    admin = user if user is not None and user.tid == found.tid and user.is_admin else None
    if request.method == "POST":
        if not _csrf_ok():
            return _error_page(90015, "The request could not be verified (CSRF token missing or invalid).")
        if request.form.get("step") == "signin":
            chosen = emu.directory.user_by_upn(request.form.get("username", ""))
            if chosen is not None and chosen.tid == found.tid and chosen.is_admin:
                session["user"], session["sid"] = chosen.oid, tokens.new_guid()
        elif admin is not None:
            principal, role = request.form.get("principal", ""), request.form.get("role", "")
            known = {u.oid for u in found.users} | {g.id for g in found.groups}
            if principal not in known or role not in client["app_roles"]:
                return _error_page(900144, "Choose a user or group of this tenant and one of the app's roles.")
            emu.assign_app_role(principal, role, client_id=client_id,
                                assigned=request.form.get("assign") == "yes")
        return redirect(request.script_root + request.path, 303)
    if admin is None:
        return render_template("admin_signin.html", tenant=found, client=client,
                               title="Sign in as an administrator")
    held = set(emu.store.app_role_assignments(found.tid, client_id))
    principals = ([(u.display_name, u.upn, "User", u.oid) for u in found.users]
                  + [(g.name, f"{len(g.members)} members", "Group", g.id) for g in found.groups])
    return render_template("users_and_groups.html", tenant=found, client=client, admin=admin, held=held,
                           principals=principals, title="Users and groups")
