"""The signed-in user's profile: the basic claims read at sign-in and the photo."""
from __future__ import annotations

from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required

import accounts

bp = Blueprint("profile", __name__, url_prefix="/profile")


@bp.get("/")
@login_required
def show():
    return render_template("profile/show.html", copy=accounts.profile_of(current_user),
                           email=accounts.user_email(current_user))


@bp.get("/photo")
@login_required
def photo():
    found = accounts.photo_of(current_user)
    if found is None:
        abort(404, "No photo is stored for you.")
    data, kind = found
    return data, 200, {"Content-Type": kind, "X-Content-Type-Options": "nosniff",
                       "Cache-Control": "private, no-store", "Content-Disposition": "inline"}
