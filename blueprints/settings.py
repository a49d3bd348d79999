"""Settings (admins only): GENERAL, USERS, SECURITY (sign-on, profiles, admin consent, enforcement, Entra admin
roles, user provisioning) and AUDIT LOG tabs."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SelectField

from blueprints import websession
from blueprints.auth import consent_page
from domain import auditlog, consent, directory, members, profiles, provisioning, signin
from domain.errors import InvalidInput
from models import Organization

bp = Blueprint("settings", __name__, url_prefix="/settings")


class EnforcementForm(FlaskForm):
    """The SECURITY tab's "Require single sign-on" setting."""

    require_sso = BooleanField("Require single sign-on")


@bp.before_request
@login_required
def admins_only():
    """Every settings page and action is for the organisation's admins."""
    if not current_user.is_authenticated:  # login_required lets OPTIONS through
        abort(401, "Sign in first.")
    if not current_user.is_admin:
        current_app.logger.warning("Non-admin user %s refused on %r", current_user.id, request.path)  # %r: no log forging
        abort(403, "Only administrators of your organisation can open Settings.")


class EntraAdminsForm(FlaskForm):
    """The SECURITY tab's "Admins are assigned in Microsoft Entra" setting."""

    admins_from_entra = BooleanField("Admins are assigned in Microsoft Entra")


class RoleForm(FlaskForm):
    role = RadioField(choices=members.ROLES)


class StoreProfilesForm(FlaskForm):
    store_profiles = BooleanField("Store an encrypted copy of user profiles")


class AdminGroupForm(FlaskForm):
    """User provisioning's "Members of this group are admins": one of the provisioned groups, or none ("")."""

    group = SelectField("Members of this group are admins", id="scim-admin-group")

    def __init__(self, status: provisioning.ProvisioningStatus, **kwargs) -> None:
        super().__init__(**kwargs)
        self.group.choices = [("", "None")] + [(c.scim_id, c.name) for c in status.group_choices]


def _org() -> Organization:
    return websession.user().organization


def tenant_url() -> str:
    """The SCIM endpoint's address for Entra's Tenant URL: from the configured external address (SERVER_NAME and
    PREFERRED_URL_SCHEME, like the redirect URI), never from the request, so it is right behind a proxy."""
    cfg = current_app.config
    return f"{cfg['PREFERRED_URL_SCHEME']}://{cfg['SERVER_NAME']}{cfg['APPLICATION_ROOT'].rstrip('/')}/scim/v2/"


@bp.get("/")
def index():
    return redirect(url_for("settings.general"))


@bp.get("/general")
def general():
    return render_template("settings/general.html", org=_org(), tab="general")


@bp.get("/security")
def security():
    if "page" in request.args:  # the audit log's pages used to live here: old links and bookmarks still work
        return redirect(url_for("settings.audit", page=request.args.get("page")), 301)
    return render_template("settings/security.html", org=_org(), tab="security",
                           activated_by=directory.display_user(_org().sso_activated_by),
                           store_form=StoreProfilesForm(store_profiles=_org().store_profiles),
                           consent_by=directory.display_user(_org().admin_consent_by),
                           break_glass=consent.break_glass_count(_org()),
                           enforcement=EnforcementForm(require_sso=_org().require_sso),
                           entra_admins=EntraAdminsForm(admins_from_entra=_org().admins_from_entra),
                           **_provisioning_block())


def _provisioning_block() -> dict:
    scim = provisioning.status(_org())
    return {"scim": scim, "tenant_url": tenant_url(), "admin_group": AdminGroupForm(scim, group=scim.admin_group or "")}


@bp.get("/audit")
def audit():
    return render_template("settings/audit.html", org=_org(), tab="audit",
                           audit=auditlog.audit_page(_org(), request.args.get("page", "1"), websession.user()))


@bp.post("/security/sso/activate")
def activate_sso():
    """Activate SSO, step one: explain what will be read before leaving for Microsoft."""
    return consent_page(_org(), action=url_for("settings.start_activation"))


@bp.post("/security/sso/start")
def start_activation():
    """Activate SSO, step two: the admin signs in at Microsoft; the callback binds the tenant."""
    url = signin.begin_sso("activate", org=_org(), login_hint=directory.user_email(websession.user()),
                           actor=websession.user(), state=websession.state(), next_path=url_for("settings.security"))
    return redirect(url, 303)


@bp.post("/security/sso/deactivate")
def deactivate_sso():
    signin.deactivate_sso(_org(), websession.user())
    flash("Single sign-on is off. Members sign in with a password again.", "info")
    return redirect(url_for("settings.security"), 303)


@bp.post("/security/profiles")
def store_profiles():
    """Save "Store an encrypted copy of user profiles"; off deletes the stored copies."""
    form = StoreProfilesForm()
    if not form.validate_on_submit():
        raise InvalidInput("The form was incomplete. Reload the SECURITY tab and try again.")
    keep = bool(form.store_profiles.data)
    deleted = profiles.set_store_profiles(_org(), keep, websession.user())
    flash("Profile copies are stored, encrypted." if keep else
          f"Profile copies are no longer kept after sign-out; {deleted} stored copies were deleted.", "info")
    return redirect(url_for("settings.security"), 303)


@bp.get("/security/profiles/purge")
def confirm_purge():
    return render_template("settings/confirm_purge.html", org=_org(), tab="security")


@bp.post("/security/profiles/purge")
def purge_profiles():
    deleted = profiles.purge_profile_copies(_org(), websession.user())
    flash(f"{deleted} stored profile copies were deleted.", "info")
    return redirect(url_for("settings.security"), 303)


@bp.post("/security/admin-consent")
def grant_admin_consent():
    """Send the admin to Entra's admin-consent page for the organisation's bound tenant."""
    return redirect(consent.begin_admin_consent(_org(), websession.user(), websession.state()), 303)


@bp.post("/security/require-sso")
def require_sso():
    """Turn "Require single sign-on" on or off."""
    form = EnforcementForm()
    if not form.validate_on_submit():
        raise InvalidInput("The setting could not be read. Reload the page and try again.")
    if consent.set_require_sso(_org(), websession.user(), form.require_sso.data,
                               keep_sid_hash=websession.current_sid_hash()):
        flash("Single sign-on is now required: members sign in with Microsoft; break-glass accounts keep their "
              "password." if form.require_sso.data else "Single sign-on is no longer required.", "success")
    return redirect(url_for("settings.security"), 303)


@bp.post("/security/entra-admins")
def entra_admins():
    """Turn "Admins are assigned in Microsoft Entra" on or off."""
    form = EntraAdminsForm()
    if not form.validate_on_submit():
        raise InvalidInput("The setting could not be read. Reload the page and try again.")
    if members.set_admins_from_entra(_org(), bool(form.admins_from_entra.data), websession.user()):
        flash("Admins are now assigned in Microsoft Entra: the app role Portal.Admin decides at each Microsoft "
              "sign-in." if form.admins_from_entra.data else "Admins are assigned on the USERS tab again.", "success")
    return redirect(url_for("settings.security"), 303)


# -- User provisioning (SCIM) ----------------------------------------------------------------------------------------

@bp.post("/security/provisioning/token")
def generate_scim_token():
    """Generate (or rotate) the provisioning token and show it once, on this response only."""
    token = provisioning.generate_token(_org(), websession.user())
    response = make_response(render_template("settings/provisioning_token.html", org=_org(), tab="security",
                                             token=token, tenant_url=tenant_url()))
    response.headers["Cache-Control"] = "no-store"  # said here too: this page must never be kept or shown again
    return response


@bp.get("/security/provisioning/rotate")
def confirm_rotate_scim_token():
    return render_template("settings/confirm_rotate.html", org=_org(), tab="security")


@bp.post("/security/provisioning/off")
def turn_off_provisioning():
    if provisioning.turn_off(_org(), websession.user()):
        flash("User provisioning is off: the token no longer works, so Microsoft Entra's provisioning calls fail. "
              "Provisioned users and groups stay as they are.", "success")
    return redirect(url_for("settings.security"), 303)


@bp.post("/security/provisioning/admin-group")
def scim_admin_group():
    """Save "Members of this group are admins"."""
    form = AdminGroupForm(provisioning.status(_org()))
    if not form.validate_on_submit():
        raise InvalidInput("That group is not one of the groups Microsoft Entra provisioned. Reload the SECURITY tab "
                           "and choose again. Nothing was changed.")
    if provisioning.set_admin_group(_org(), form.group.data or None, websession.user()):
        name = dict(form.group.choices).get(form.group.data)
        flash(f"Members of the group {name} are admins now; provisioning decides roles, not app roles at sign-in."
              if form.group.data else "No provisioned group decides who is admin any more.", "success")
    return redirect(url_for("settings.security"), 303)


# -- USERS ------------------------------------------------------------------------------------------------------

@bp.get("/users")
def users():
    listing = members.members_page(_org(), request.args.get("page", "1"), websession.user(),
                                   email=request.args.get("email", ""))
    return render_template("settings/users.html", org=_org(), tab="users", listing=listing)


def _back_to_users():
    return redirect(url_for("settings.users"), 303)


@bp.post("/users/<user_id>/role")
def set_role(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    form = RoleForm()
    if not form.validate_on_submit():
        raise InvalidInput("A role is admin or member. Reload the USERS tab and try again.")
    if members.set_role(_org(), user, form.role.data, websession.user()):
        flash(f"{directory.display_user(user)} is now {'an admin' if form.role.data == 'admin' else 'a member'}.",
              "success")
    return _back_to_users()


@bp.post("/users/<user_id>/block")
def block(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    ended = members.set_blocked(_org(), user, True, websession.user())
    flash(f"{directory.display_user(user)} is blocked; {ended} session{'' if ended == 1 else 's'} ended.", "success")
    return _back_to_users()


@bp.post("/users/<user_id>/unblock")
def unblock(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    members.set_blocked(_org(), user, False, websession.user())
    flash(f"{directory.display_user(user)} can sign in again.", "success")
    return _back_to_users()


@bp.post("/users/<user_id>/sign-out")
def sign_out_everywhere(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    ended = members.sign_out_everywhere(_org(), user, websession.user())
    flash(f"{directory.display_user(user)} is signed out everywhere ({ended} session{'' if ended == 1 else 's'}).",
          "success")
    return _back_to_users()


@bp.get("/users/<user_id>/remove")
def confirm_remove(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    return render_template("settings/confirm_remove.html", org=_org(), tab="users", user=user,
                           name=directory.display_user(user), microsoft=user.object_id is not None)


@bp.post("/users/<user_id>/remove")
def remove(user_id: str):
    user = members.member(_org(), user_id, websession.user())
    name = directory.display_user(user)
    members.remove(_org(), user, websession.user())
    flash(f"{name} was removed.", "success")
    return _back_to_users()
