"""Login prompt, password step, consent explanation, Microsoft sign-in and callback, sign-out."""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField
from wtforms.validators import DataRequired, InputRequired, Length

import accounts

bp = Blueprint("auth", __name__)


EMAIL_CHECKS = [DataRequired("Enter your email address."),
                Length(max=accounts.MAX_EMAIL, message="This is too long for an email address: enter one of at most "
                                                       f"{accounts.MAX_EMAIL} characters.")]


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

    email = HiddenField(validators=[InputRequired(), Length(max=accounts.MAX_EMAIL)])
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


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Step one: an email; its domain decides between Microsoft and a password."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = EmailForm(next=safe_next(request.args.get("next")))
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form), 400 if form.is_submitted() else 200
    try:
        realm = accounts.find_realm(form.email.data)
    except accounts.InvalidInput as e:
        _invalid(form.email, e.message)
        return render_template("auth/login.html", form=form), e.status
    next_path = safe_next(form.next.data)
    if realm.kind == "password":
        return render_template("auth/password.html", form=PasswordForm(email=realm.email, next=next_path))
    if accounts.needs_consent_explanation(realm):
        return render_template("auth/consent.html", form=ContinueForm(email=realm.email, next=next_path),
                               org=realm.organization, for_admin=False)
    return redirect(accounts.begin_sso("sign_in", org=realm.organization, login_hint=realm.email,
                                       next_path=next_path), 303)


@bp.route("/login/password", methods=["GET", "POST"])
def password():
    """Step two for local accounts; also reachable directly ("Use a password instead") while SSO is optional."""
    form = PasswordForm(next=safe_next(request.args.get("next")))
    if request.method == "GET":
        return render_template("auth/password.html", form=form)
    if not form.validate_on_submit():
        return render_template("auth/password.html", form=form), 400
    try:
        accounts.password_sign_in(form.email.data, form.password.data, client=request.remote_addr)
    except accounts.InvalidInput as e:  # the email is no email address: said next to it
        _invalid(form.email, e.message)
        return render_template("auth/password.html", form=form), e.status
    except accounts.SignInFailed as e:
        return render_template("auth/password.html", form=form, error=e.message), e.status
    return redirect(safe_next(form.next.data), 303)


@bp.post("/auth/sso/start")
def sso_start():
    """Continue to Microsoft from the consent explanation."""
    form = ContinueForm()
    if not form.validate_on_submit():
        raise accounts.InvalidInput("The sign-in form was incomplete. Start again from the login page.")
    realm = accounts.find_realm(form.email.data)
    if realm.kind != "sso":
        return redirect(url_for("auth.login"), 303)
    return redirect(accounts.begin_sso("sign_in", org=realm.organization, login_hint=realm.email,
                                       next_path=safe_next(form.next.data)), 303)


@bp.get(accounts.CALLBACK_PATH)
def callback():
    """Microsoft sends the browser back here with a code or an error."""
    states = request.args.getlist("state")
    try:
        pending = accounts.take_flow(states)
    except accounts.FlowFinished:
        if not current_user.is_authenticated:
            raise
        # Re-opened after signing in (Back, history): go where that sign-in went.
        return redirect(safe_next(accounts.finished_destination(states)), 303)
    actor = current_user if current_user.is_authenticated else None
    outcome = accounts.complete_sso(pending, request.args.to_dict(flat=True), actor=actor)
    if pending["purpose"] == "activate":
        flash("Single sign-on is active. Members now sign in with Microsoft.", "success")
        if outcome.not_linked:
            flash(f"You signed in at Microsoft as {outcome.not_linked}, not with your own account, so that "
                  "Microsoft account was not linked to yours. Your own is linked the first time you sign in "
                  "with it.", "info")
        return redirect(url_for("settings.security"), 303)
    flash("Signed in with Microsoft.", "success")
    return redirect(safe_next(pending.get("next")), 303)


@bp.get(accounts.ADMIN_CONSENT_CALLBACK_PATH)
def admin_consent_callback():
    """Microsoft sends the admin back here after granting (or not) consent for the organisation."""
    pending = accounts.take_admin_consent(request.args.getlist("state"))
    actor = current_user if current_user.is_authenticated else None
    accounts.complete_admin_consent(pending, request.args.to_dict(flat=True), actor=actor)
    flash("Admin consent is granted: members of your organisation are no longer asked to consent.", "success")
    return redirect(url_for("settings.security"), 303)


@bp.post("/logout")
@login_required
def logout():
    """Sign out here; SSO users go on to Microsoft's sign-out and come back."""
    microsoft_sign_out = accounts.end_session()
    flash("You are signed out.", "info")
    return redirect(microsoft_sign_out or url_for("auth.login"), 303)
