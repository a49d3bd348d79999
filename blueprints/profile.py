"""The signed-in user's profile: the basic claims read at sign-in, the photo, export and deletion of the copy."""
from __future__ import annotations

import json

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from blueprints import websession
from domain import directory, profiles

bp = Blueprint("profile", __name__, url_prefix="/profile")


@bp.get("/")
@login_required
def show():
    user = current_user._get_current_object()  # the SessionUser the session check read: nothing more to load
    return render_template("profile/show.html", copy=profiles.profile_of(user), email=directory.user_email(user))


@bp.get("/photo")
@login_required
def photo():
    """Only the owner's own photo: the URL names no user, so nobody can ask for someone else's."""
    found = profiles.photo_of(current_user._get_current_object())
    if found is None:
        abort(404, "No photo is stored for you.")
    data, kind = found
    return data, 200, {"Content-Type": kind, "X-Content-Type-Options": "nosniff",
                       "Cache-Control": "private, no-store", "Content-Disposition": "inline"}


@bp.post("/export")
@login_required
def export():
    """Download my data: a POST because the export is audited."""
    body = json.dumps(profiles.export_user_data(websession.user()), indent=2, ensure_ascii=False)
    return body, 200, {"Content-Type": "application/json; charset=utf-8", "X-Content-Type-Options": "nosniff",
                       "Cache-Control": "private, no-store",
                       "Content-Disposition": 'attachment; filename="my-portal-data.json"'}


@bp.get("/delete")
@login_required
def confirm_delete():
    # Nothing is decrypted here, so an unreadable copy can still be deleted.
    return render_template("profile/delete.html")


@bp.post("/delete")
@login_required
def delete():
    profiles.delete_stored_copy(websession.user())
    flash("Your stored copy is deleted.", "success")
    return redirect(url_for("profile.show"), 303)
