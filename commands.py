"""The `flask --app app ...` commands for operators."""
from __future__ import annotations

import json
import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

import accounts
import vault

DEMO_PASSWORD = "northwind-demo-password"
DEMO_ORGS = (
    ("Northwind Traders", "northwind.example", "admin@northwind.example"),
    ("Fabrikam Research", "fabrikam.example", "admin@fabrikam.example"),
)


def init_app(app: Flask) -> None:
    for command in (init_db, create_org, create_admin, deactivate_sso, generate_key, demo, rotate_keys,
                    sweep_sessions, audit):
        app.cli.add_command(command)


def _fail(e: Exception) -> None:
    raise click.ClickException(getattr(e, "message", str(e)))


def _organization(name: str):
    """The organisation called `name`, or a one-line error and exit code 1."""
    try:
        return accounts.get_organization(name)
    except accounts.PortalError as e:
        _fail(e)


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the database tables by running the migrations (safe to run again)."""
    accounts.ensure_schema()
    click.echo("Database ready.")


@click.command("create-org")
@with_appcontext
@click.argument("name")
@click.option("--domain", "domains", multiple=True, required=True, help="An email domain of the organisation.")
def create_org(name: str, domains: tuple[str, ...]) -> None:
    """Create an organisation with one or more email domains."""
    try:
        org = accounts.create_organization(name, domains)
    except accounts.PortalError as e:
        _fail(e)
    click.echo(f"Created organisation {org.name} with {', '.join(d.name for d in org.domains)}.")


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--break-glass", is_flag=True, help="May sign in with a password even when SSO is required.")
def create_admin(email: str, org_name: str, password_stdin: bool, break_glass: bool) -> None:
    """Create an administrator with a password."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = accounts.create_local_user(email, org_name, password, role="admin", break_glass=break_glass)
    except accounts.PortalError as e:
        _fail(e)
    click.echo(f"Created administrator {accounts.user_email(user)} in {org_name}.")


@click.command("deactivate-sso")
@with_appcontext
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def deactivate_sso(org_name: str) -> None:
    """Turn single sign-on off for an organisation (the operator's way back in)."""
    org = _organization(org_name)
    accounts.deactivate_sso(org, None, via="cli")
    click.echo(f"Single sign-on is off for {org.name}; password accounts can sign in.")


@click.command("generate-key")
@with_appcontext
def generate_key() -> None:
    """Print a new encryption key for ENCRYPTION_KEYS."""
    click.echo(vault.generate_key())


@click.command("demo")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="Only create the demo data.")
def demo(host: str, port: int, no_serve: bool) -> None:
    """Create the demo organisations and admins, then serve the portal."""
    if not current_app.config["DEMO_MODE"]:
        raise click.ClickException("The demo needs demo mode: run it with FLASK_DEMO_MODE=1.")
    accounts.ensure_schema()
    for name, domain, email in DEMO_ORGS:
        try:
            accounts.get_organization(name)
        except accounts.PortalError:
            accounts.create_organization(name, [domain])
            accounts.create_local_user(email, name, DEMO_PASSWORD, role="admin", break_glass=True)
    click.echo("Demo data ready. Open http://%s:%d/login and sign in as admin@northwind.example "
               "with the password %s." % (host, port, DEMO_PASSWORD))
    click.echo("A second organisation, Fabrikam Research, has admin@fabrikam.example with the same password.")
    click.echo("Then: Settings → SECURITY → Activate SSO, and sign in at the emulated Microsoft page.")
    if not no_serve:
        from werkzeug.serving import run_simple

        run_simple(host, port, current_app._get_current_object(), threaded=True)


@click.command("rotate-keys")
@with_appcontext
@click.option("--batch-size", default=200, show_default=True, type=click.IntRange(1, 10_000),
              help="Rows re-encrypted and committed together.")
def rotate_keys(batch_size: int) -> None:
    """Re-encrypt all personal data under the newest key (resumable: rows already under it are skipped)."""
    v = vault.get_vault()
    total = accounts.rotation_total()
    with click.progressbar(length=total, label=f"Re-encrypting under key {v.current_key_id}") as bar:
        report = accounts.rotate_keys(batch_size, progress=bar.update)
    for table, count in report.items():
        click.echo(f"{table}: {count.reencrypted} re-encrypted, {count.current} already under the newest key, "
                   f"{count.unreadable} unreadable")
    unreadable = sum(c.unreadable for c in report.values())
    if unreadable:
        raise click.ClickException(
            f"{unreadable} rows could not be decrypted with the configured keys and were left unchanged "
            "(the log names them). Keep every older key configured until they are dealt with.")
    click.echo(f"All personal data is under key {v.current_key_id}; older keys can be removed from ENCRYPTION_KEYS.")


@click.command("sweep-sessions")
@with_appcontext
def sweep_sessions() -> None:
    """Delete expired sessions, the profile copies that lived only for them and expired sign-in throttle counts."""
    sessions, copies = accounts.sweep_sessions()
    click.echo(f"Deleted {sessions} expired sessions and {copies} session-only profile copies.")


@click.command("audit")
@with_appcontext
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def audit(org_name: str) -> None:
    """Print an organisation's audit log as JSON lines, oldest first (time in UTC)."""
    org = _organization(org_name)
    for entry in accounts.audit_log(org):
        click.echo(json.dumps(entry.as_json(), ensure_ascii=False))
