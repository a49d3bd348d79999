"""Settings (admins only): GENERAL and SECURITY tabs, single sign-on activation and deactivation."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

import accounts
from models import Organization

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.before_request
@login_required
def admins_only():
    """Every settings page and action is for the organisation's admins."""
    if not current_user.is_authenticated:  # login_required lets OPTIONS through
        abort(401, "Sign in first.")
    if not current_user.is_admin:
        current_app.logger.warning("Non-admin user %s refused on %r", current_user.id, request.path)  # %r: no log forging
        abort(403, "Only administrators of your organisation can open Settings.")


def _org() -> Organization:
    return current_user.organization


@bp.get("/")
def index():
    return redirect(url_for("settings.general"))


@bp.get("/general")
def general():
    return render_template("settings/general.html", org=_org(), tab="general")


@bp.get("/security")
def security():
    return render_template("settings/security.html", org=_org(), tab="security",
                           activated_by=accounts.display_user(_org().sso_activated_by))


@bp.post("/security/sso/activate")
def activate_sso():
    """Activate SSO, step one: explain what will be read before leaving for Microsoft."""
    return render_template("auth/consent.html", org=_org(), for_admin=True,
                           action=url_for("settings.start_activation"))


@bp.post("/security/sso/start")
def start_activation():
    """Activate SSO, step two: the admin signs in at Microsoft; the callback binds the tenant."""
    url = accounts.begin_sso("activate", org=_org(), login_hint=accounts.user_email(current_user),
                             actor=current_user,
                             next_path=url_for("settings.security"))
    return redirect(url, 303)


@bp.post("/security/sso/deactivate")
def deactivate_sso():
    accounts.deactivate_sso(_org(), current_user)
    flash("Single sign-on is off. Members sign in with a password again.", "info")
    return redirect(url_for("settings.security"), 303)
