"""Login prompt, password step, consent explanation, Microsoft sign-in and callbacks, sign-out."""
from __future__ import annotations

import re
from typing import Callable
from urllib.parse import unquote, urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField
from wtforms.validators import DataRequired, InputRequired, Length

import entra
from blueprints import websession
from domain import consent, directory, passwords, sessions, signin
from domain.addresses import MAX_EMAIL
from domain.errors import FlowFinished, InvalidInput, SignInFailed
from models import Organization

bp = Blueprint("auth", __name__)

# What the sign-in throttles count, as (endpoint, method): filled by @sign_in_step below.
SIGN_IN_ENDPOINTS: set[tuple[str, str]] = set()
# The endpoints Microsoft sends the browser back to.
CALLBACKS: set[str] = set()


def sign_in_step(method: str, *, callback: bool = False) -> Callable:
    """Route a step of signing in: the sign-in throttles count it (POST forms, and Microsoft's callbacks)."""
    def register(view: Callable) -> Callable:
        SIGN_IN_ENDPOINTS.add((f"{bp.name}.{view.__name__}", method))
        if callback:
            CALLBACKS.add(f"{bp.name}.{view.__name__}")
        return view
    return register


EMAIL_CHECKS = [DataRequired("Enter your email address."),
                Length(max=MAX_EMAIL, message="This is too long for an email address: enter one of at most "
                                              f"{MAX_EMAIL} characters.")]


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class EmailForm(FlaskForm):
    email = EmailField("Email", filters=[_strip], validators=EMAIL_CHECKS)
    next = HiddenField()


class PasswordForm(FlaskForm):
    email = EmailField("Email", filters=[_strip], validators=EMAIL_CHECKS)
    password = PasswordField("Password", validators=[
        InputRequired("Enter your password."),
        Length(max=1024, message="This is too long for a password: enter one of at most 1,024 characters.")])
    next = HiddenField()


def _invalid(field, message: str) -> None:
    """Show a domain refusal next to the field it is about, on the same form."""
    field.errors = [*field.errors, message]


class ContinueForm(FlaskForm):
    """The consent explanation's Continue to Microsoft button."""

    email = HiddenField(validators=[InputRequired(), Length(max=MAX_EMAIL)])
    next = HiddenField()


_UNSAFE = re.compile(r"[\x00-\x20\\\x7f]")


def safe_next(target: str | None) -> str:
    """A same-site path to return to after sign-in; anything else becomes '/'."""
    if not target or len(target) > 512:
        return "/"
    decoded = unquote(unquote(target))
    for value in (target, decoded):
        parts = urlsplit(value)
        if _UNSAFE.search(value) or not value.startswith("/") or value.startswith("//") or parts.scheme or parts.netloc:
            return "/"
    return target


def consent_page(org: Organization, *, form: ContinueForm | None = None, action: str | None = None):
    """What the portal reads from Microsoft, before a member's sign-in (form) or an admin's activation (action)."""
    return render_template("auth/consent.html", org=org, form=form, action=action, for_admin=form is None)


def _to_microsoft(realm: directory.Realm, next_path: str):
    return redirect(signin.begin_sso("sign_in", org=realm.organization, login_hint=realm.email,
                                     state=websession.state(), next_path=next_path), 303)


def _after_email(realm: directory.Realm, next_path: str):
    """Step one's answer: the password step, the consent explanation, or Microsoft."""
    if realm.kind == "password":
        return render_template("auth/password.html", form=PasswordForm(email=realm.email, next=next_path))
    if signin.needs_consent_explanation(realm):
        return consent_page(realm.organization, form=ContinueForm(email=realm.email, next=next_path))
    return _to_microsoft(realm, next_path)


@bp.route("/login", methods=["GET", "POST"])
@sign_in_step("POST")
def login():
    """Step one: an email; its domain decides between Microsoft and a password."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = EmailForm(next=safe_next(request.args.get("next")))
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form), 400 if form.is_submitted() else 200
    try:
        realm = directory.find_realm(form.email.data)
    except InvalidInput as e:
        _invalid(form.email, e.message)
        return render_template("auth/login.html", form=form), e.status
    return _after_email(realm, safe_next(form.next.data))


@bp.route("/login/password", methods=["GET", "POST"])
@sign_in_step("POST")
def password():
    """Step two for local accounts; also reachable directly ("Use a password instead") while SSO is optional."""
    form = PasswordForm(next=safe_next(request.args.get("next")))
    if request.method == "GET" or not form.validate_on_submit():
        return render_template("auth/password.html", form=form), 200 if request.method == "GET" else 400
    try:
        user = passwords.password_sign_in(form.email.data, form.password.data, client=request.remote_addr,
                                          state=websession.state())
    except InvalidInput as e:  # the email is no email address: said next to it
        _invalid(form.email, e.message)
        return render_template("auth/password.html", form=form), e.status
    except SignInFailed as e:
        return render_template("auth/password.html", form=form, error=e.message), e.status
    websession.signed_in(user)
    return redirect(safe_next(form.next.data), 303)


@bp.post("/auth/sso/start")
@sign_in_step("POST")
def sso_start():
    """Continue to Microsoft from the consent explanation."""
    form = ContinueForm()
    if not form.validate_on_submit():
        raise InvalidInput("The sign-in form was incomplete. Start again from the login page.")
    realm = directory.find_realm(form.email.data)
    if realm.kind != "sso":
        return redirect(url_for("auth.login"), 303)
    return _to_microsoft(realm, safe_next(form.next.data))


def _callback_input() -> tuple[list[str], dict[str, str], object]:
    """What Microsoft's callbacks read: the state(s), every parameter, and who is signed in here (or None)."""
    actor = websession.user() if current_user.is_authenticated else None
    return request.args.getlist("state"), request.args.to_dict(flat=True), actor


def _sso_finished(pending: dict, outcome: signin.SsoOutcome):
    if pending["purpose"] != "activate":
        websession.signed_in(outcome.user)
        flash("Signed in with Microsoft.", "success")
        return redirect(safe_next(pending.get("next")), 303)
    flash("Single sign-on is active. Members now sign in with Microsoft.", "success")
    if outcome.not_linked:
        flash(f"You signed in at Microsoft as {outcome.not_linked}, not with your own account, so that Microsoft "
              "account was not linked to yours. Your own is linked the first time you sign in with it.", "info")
    return redirect(url_for("settings.security"), 303)


@bp.get(entra.CALLBACK_PATH)
@sign_in_step("GET", callback=True)
def callback():
    """Microsoft sends the browser back here with a code or an error."""
    states, params, actor = _callback_input()
    try:
        pending = signin.take_flow(websession.state(), states)
    except FlowFinished:
        if actor is None:
            raise
        # Re-opened after signing in (Back, history): go where that sign-in went.
        return redirect(safe_next(sessions.finished_destination(websession.state(), states)), 303)
    return _sso_finished(pending, signin.complete_sso(websession.state(), pending, params, actor=actor))


@bp.get(entra.ADMIN_CONSENT_CALLBACK_PATH)
@sign_in_step("GET", callback=True)
def admin_consent_callback():
    """Microsoft sends the admin back here after granting (or not) consent for the organisation."""
    states, params, actor = _callback_input()
    pending = consent.take_admin_consent(websession.state(), states)
    consent.complete_admin_consent(pending, params, actor=actor)
    flash("Admin consent is granted: members of your organisation are no longer asked to consent.", "success")
    return redirect(url_for("settings.security"), 303)


@bp.get(entra.FRONT_CHANNEL_LOGOUT_PATH)
def front_channel_logout():
    """Microsoft's sign-out page loads this in a hidden iframe: end the sessions of that Microsoft session. No
    cookie (third-party in the iframe) and no CSRF token: it can only end sessions; framing is allowed for the
    authority alone (app.py's header hook)."""
    signin.front_channel_logout(request.args.get("sid"), request.args.get("iss"))
    return render_template("auth/front_channel_logout.html")


@bp.post("/logout")
@login_required
def logout():
    """Sign out here; SSO users go on to Microsoft's sign-out and come back."""
    microsoft_sign_out = websession.sign_out()
    flash("You are signed out.", "info")
    return redirect(microsoft_sign_out or url_for("auth.login"), 303)
