"""The `flask --app app ...` commands for operators."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click
import sqlalchemy as sa
from flask import Flask, current_app, g, url_for
from flask.cli import ScriptInfo, with_appcontext
from werkzeug.routing import BuildError

import configuration
import demo as demo_data
import entra
import extensions
import vault
from demo import DEMO_PASSWORD  # noqa: F401 (tests and scripts read it here)
from domain import auditlog, directory, errors, keys, members, passwords, policy, sessions, signin
from models import db


# Commands that work before the portal is configured; every other one prints the configuration's problem.
ANY_TIME = {"generate-key", "check-config"}


def init_app(app: Flask) -> None:
    for command in (init_db, orgs, create_org, rename_org, add_domain, remove_domain, delete_org, create_admin,
                    set_password, deactivate_sso, generate_key, check_config, demo, rotate_keys, sweep_sessions,
                    audit, users, set_role, block, unblock, remove):
        app.cli.add_command(command)
    app.cli.add_command(migrate_commands)  # Flask-Migrate's `db` group, also when the portal is not configured
    for command in app.cli.commands.values():
        _one_line_errors(command)


class _MigrateGroup(click.Group):
    """Flask-Migrate's `db` commands, imported when one is asked for (a web worker never loads Alembic)."""

    def _real(self) -> click.Group:
        from flask_migrate.cli import db as real
        _one_line_errors(real)
        return real

    def list_commands(self, ctx):
        return self._real().list_commands(ctx)

    def get_command(self, ctx, name):
        return self._real().get_command(ctx, name)


@click.group("db", cls=_MigrateGroup)
@click.option("-d", "--directory", default=None, help='Migration script directory (default is "migrations")')
@click.option("-x", "--x-arg", multiple=True, help="Additional arguments consumed by custom env.py scripts")
@with_appcontext
def migrate_commands(directory, x_arg) -> None:
    """Perform database migrations."""
    extensions.register_migrations(current_app)
    g.directory, g.x_arg = directory, x_arg  # what Flask-Migrate's own group sets for its commands


def unconfigured_app(configured: Flask, failure: str) -> Flask:
    """An app that only lists the commands: `--help`, generate-key and check-config work, the rest print `failure`."""
    app = Flask(configured.import_name, instance_path=configured.instance_path, instance_relative_config=True)
    app.config.update(configured.config)
    app.extensions["config_problems"] = configured.extensions.get("config_problems", [])
    app.extensions["portal_unconfigured"] = failure
    init_app(app)
    return app


def describe_failure(e: BaseException) -> str | None:
    """One line for refused input, a configuration, key or database failure, naming the fix; None for anything
    else (a bug)."""
    if isinstance(e, errors.PortalError):  # the domain refused: its own sentence
        return e.message
    if isinstance(e, configuration.ConfigError):
        return str(e)
    if isinstance(e, vault.KeyConfigError):
        text = str(e)
        return text if text.startswith("ENCRYPTION_KEYS") else f"Encryption keys: {text}."
    if isinstance(e, sa.exc.ArgumentError):  # the value itself may hold a password: not repeated
        return ("SQLALCHEMY_DATABASE_URI is not a database URL the portal can use: set it like "
                "postgresql+psycopg://portal:PASSWORD@host/portal or sqlite:////path/to/portal.sqlite.")
    if isinstance(e, sa.exc.DBAPIError):
        reason = str(e.orig).strip().splitlines()[0][:200] if str(e.orig).strip() else type(e.orig).__name__
        if "no such table" in reason or "no such column" in reason or getattr(e.orig, "sqlstate", None) in (
                "42P01", "42703"):  # undefined table / column
            return ("The database's tables are missing or older than this portal: run `flask --app app db upgrade` "
                    "first.")
        if isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError)):
            return (f"The database cannot be reached ({reason}): check SQLALCHEMY_DATABASE_URI and that the "
                    "database server is running.")
    return None


def _one_line_errors(command: click.Command) -> None:
    """Turn configuration, key and database failures into one `Error: ...` line and exit code 1."""
    for sub in getattr(command, "commands", {}).values():
        _one_line_errors(sub)
    inner = command.callback
    if inner is None or getattr(inner, "_one_line", False):
        return

    @functools.wraps(inner)
    def callback(*args, **kwargs):
        ctx = click.get_current_context()
        info = ctx.find_object(ScriptInfo)
        app = info.load_app() if info is not None else current_app
        failure = app.extensions.get("portal_unconfigured")
        if failure and command.name not in ANY_TIME:
            raise click.ClickException(failure)
        try:
            return inner(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as e:
            failure = describe_failure(e)
            if failure is None:
                raise
            raise click.ClickException(failure) from None

    callback._one_line = True  # type: ignore[attr-defined]
    command.callback = callback


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the database tables by running the migrations (safe to run again)."""
    extensions.ensure_schema()
    click.echo("Database ready.")


@click.command("create-org")
@with_appcontext
@click.argument("name")
@click.option("--domain", "domains", multiple=True, required=True, help="An email domain of the organisation.")
def create_org(name: str, domains: tuple[str, ...]) -> None:
    """Create an organisation with one or more email domains."""
    org = directory.create_organization(name, domains, policy.OPERATOR)
    click.echo(f"Created organisation {org.name} with {', '.join(d.name for d in org.domains)}.")


@click.command("orgs")
@with_appcontext
def orgs() -> None:
    """List the organisations: name, domains, number of users, single sign-on."""
    found = directory.organizations()
    if not found:
        click.echo("No organisations yet: create one with `flask --app app create-org NAME --domain DOMAIN`.")
    for org, users in found:
        sso = f"SSO active (tenant {org.tenant_id})" if org.sso_active else "SSO off"
        click.echo(f"{org.name}\t{', '.join(d.name for d in org.domains)}\t"
                   f"{users} user{'' if users == 1 else 's'}\t{sso}")


@click.command("rename-org")
@with_appcontext
@click.argument("name")
@click.argument("new_name")
def rename_org(name: str, new_name: str) -> None:
    """Give an organisation a new name (names are unique without regard to case)."""
    org = directory.get_organization(name)
    old = directory.rename_organization(org, new_name, policy.OPERATOR)
    click.echo(f"Renamed organisation {old} to {org.name}.")


@click.command("add-domain")
@with_appcontext
@click.argument("domain")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def add_domain(domain: str, org_name: str) -> None:
    """Add an email domain to an organisation."""
    org = directory.get_organization(org_name)
    added = directory.add_domain(org, domain, policy.OPERATOR)
    click.echo(f"Added {added} to {org.name}.")


@click.command("remove-domain")
@with_appcontext
@click.argument("domain")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def remove_domain(domain: str, org_name: str) -> None:
    """Remove an email domain from an organisation (never its last one)."""
    org = directory.get_organization(org_name)
    removed, affected = directory.remove_domain(org, domain, policy.OPERATOR)
    click.echo(f"Removed {removed} from {org.name}.")
    if affected:
        click.echo(f"{affected} of its accounts have an email in {removed}: password accounts keep signing in with "
                   "their password; Microsoft sign-ins from that domain no longer reach the organisation.")


@click.command("delete-org")
@with_appcontext
@click.argument("name")
@click.option("--yes", is_flag=True, help="Confirm: delete the organisation, its users and all their data.")
def delete_org(name: str, yes: bool) -> None:
    """Delete an organisation with its users and everything stored about them (needs --yes)."""
    org = directory.get_organization(name)
    if not yes:
        users = sum(n for o, n in directory.organizations() if o.id == org.id)
        raise click.ClickException(f"Deleting {org.name} deletes its {users} user{'' if users == 1 else 's'} and "
                                   "everything stored about them, for good: run again with --yes to confirm.")
    org_name = org.name
    counts = directory.delete_organization(org)
    done = ", ".join(f"{n} {kind if n == 1 else kind.replace('copy', 'copie') + 's'}" for kind, n in counts.items())
    click.echo(f"Deleted organisation {org_name}: {done}.")


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--break-glass", is_flag=True, help="May sign in with a password even when SSO is required.")
def create_admin(email: str, org_name: str, password_stdin: bool, break_glass: bool) -> None:
    """Create an administrator with a password."""
    password = _read_password(password_stdin)
    user = passwords.create_local_user(email, org_name, password, role="admin", break_glass=break_glass,
                                      actor=policy.OPERATOR)
    click.echo(f"Created administrator {directory.user_email(user)} in {user.organization.name}.")


@click.command("set-password")
@with_appcontext
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def set_password(email: str, password_stdin: bool) -> None:
    """Give a password account a new password and end its sessions."""
    password = _read_password(password_stdin)
    user, ended = passwords.set_password(email, password, policy.OPERATOR)
    click.echo(f"New password set for {directory.user_email(user)}; {ended} session{'' if ended == 1 else 's'} "
               "ended.")


@click.command("deactivate-sso")
@with_appcontext
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def deactivate_sso(org_name: str) -> None:
    """Turn single sign-on off for an organisation (the operator's way back in)."""
    org = directory.get_organization(org_name)
    signin.deactivate_sso(org, policy.OPERATOR, via="cli")
    click.echo(f"Single sign-on is off for {org.name}; password accounts can sign in.")


@click.command("generate-key")
def generate_key() -> None:
    """Print a new encryption key for ENCRYPTION_KEYS."""
    click.echo(vault.generate_key())


@click.command("check-config")
@with_appcontext
def check_config() -> None:
    """Check every setting, then the authority's discovery document; print the URLs to register at Microsoft."""
    app = current_app._get_current_object()
    found = list(app.extensions.get("config_problems", []))
    failure = app.extensions.get("portal_unconfigured")
    if failure and not found:
        found.append(failure)  # the settings are complete, but the database or the keys failed
    for problem in found:
        click.echo(f"Problem: {problem}")
    if found:
        raise click.ClickException(f"{len(found)} problem(s) with the settings; fix them and run check-config again.")
    if not _schema_is_current():
        raise click.ClickException("The database's tables are missing or older than this portal: run "
                                   "`flask --app app db upgrade`, then check-config again.")
    client = entra.client()
    quiet = logging.NullHandler()  # the Error line says what the log would; handlers an operator set still get it
    entra.log.addHandler(quiet)
    try:
        issuer = client.discovery()["issuer"]
    except entra.EntraError as e:
        raise click.ClickException(f"{e.detail or e.message} Check ENTRA_AUTHORITY ({client.authority}).") from None
    finally:
        entra.log.removeHandler(quiet)
    click.echo(f"Settings: complete. Discovery: {client.authority}{entra.DISCOVERY_PATH} names the expected "
               f"issuer {issuer}.")
    click.echo("Register these redirect URIs (platform: Web) in the app registration:")
    click.echo(f"  {client.redirect_uri}")
    click.echo(f"  {client.admin_consent_redirect_uri}")
    try:
        front_channel = url_for("auth.front_channel_logout", _external=True)
    except BuildError:
        front_channel = None  # no such route in this version
    if front_channel:
        click.echo(f"Front-channel logout URL: {front_channel}")


def _schema_is_current() -> bool:
    """Whether the database is at the newest migration (Alembic's heads)."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current == set(ScriptDirectory(extensions.MIGRATIONS).get_heads())


@click.command("demo")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="Only create the demo data.")
def demo(host: str, port: int, no_serve: bool) -> None:
    """Create the demo organisations and admins, then serve the portal (on this computer only)."""
    if not current_app.config["DEMO_MODE"]:
        raise click.ClickException("The demo needs demo mode: run it with FLASK_DEMO_MODE=1.")
    if not configuration.is_loopback(host):
        raise click.ClickException(
            f"The demo serves only this computer (--host 127.0.0.1, ::1 or localhost), not {host}: anyone who could "
            "reach it could pick any account on the emulated Microsoft page, and the demo admin's password is in "
            "the README.")
    app = current_app._get_current_object()
    server_name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not no_serve and app.config["SERVER_NAME"] != server_name:
        # The redirect URIs and the emulator's pages are built from SERVER_NAME when the app is made.
        app = app.extensions["portal_rebuild"]({"SERVER_NAME": server_name})
    with app.app_context():
        extensions.ensure_schema()
        demo_data.create_data()
    click.echo("Demo data ready. Open http://%s/login and sign in as admin@northwind.example "
               "with the password %s." % (server_name, DEMO_PASSWORD))
    click.echo("A second organisation, Fabrikam Research, has admin@fabrikam.example with the same password.")
    click.echo("Then: Settings → SECURITY → Activate SSO, and sign in at the emulated Microsoft page.")
    if not no_serve:
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True)


@click.command("rotate-keys")
@with_appcontext
@click.option("--batch-size", default=200, show_default=True, type=click.IntRange(1, 10_000),
              help="Rows re-encrypted and committed together.")
def rotate_keys(batch_size: int) -> None:
    """Re-encrypt all personal data under the newest key (resumable: rows already under it are skipped)."""
    v = vault.get_vault()
    total = keys.rotation_total()
    with click.progressbar(length=total, label=f"Re-encrypting under key {v.current_key_id}") as bar:
        report = keys.rotate_keys(batch_size, progress=bar.update)
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
    ended, copies = sessions.sweep_sessions()
    click.echo(f"Deleted {ended} expired sessions and {copies} session-only profile copies.")


@click.command("audit")
@with_appcontext
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def audit(org_name: str) -> None:
    """Print an organisation's audit log as JSON lines, oldest first (time in UTC)."""
    org = directory.get_organization(org_name)
    for entry in auditlog.audit_log(org, policy.OPERATOR):
        click.echo(json.dumps(entry.as_json(), ensure_ascii=False))


@click.command("users")
@with_appcontext
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def users(org_name: str) -> None:
    """Print an organisation's users as JSON lines, newest sign-in first."""
    org = directory.get_organization(org_name)
    for row in members.all_members(org, policy.OPERATOR):
        click.echo(json.dumps(row.as_json(), ensure_ascii=False))


def _member(email: str, org_name: str):
    """The organisation and its user with that email (a refusal is the command's one Error: line)."""
    org = directory.get_organization(org_name)
    return org, members.member_by_email(org, email, policy.OPERATOR)


@click.command("set-role")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
@click.argument("role", type=click.Choice(members.ROLES))
def set_role(email: str, org_name: str, role: str) -> None:
    """Make a user an admin or a member (the organisation keeps an admin who can sign in)."""
    org, user = _member(email, org_name)
    changed = members.set_role(org, user, role, policy.OPERATOR)
    click.echo(f"{directory.display_user(user)} is {'now' if changed else 'already'} {'an' if role == 'admin' else 'a'} "
               f"{role} of {org.name}.")


@click.command("block")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def block(email: str, org_name: str) -> None:
    """Block a user: no sign-in by any method, and every session ends now."""
    org, user = _member(email, org_name)
    ended = members.set_blocked(org, user, True, policy.OPERATOR)
    click.echo(f"{directory.display_user(user)} is blocked; {ended} session{'' if ended == 1 else 's'} ended.")


@click.command("unblock")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
def unblock(email: str, org_name: str) -> None:
    """Let a blocked user sign in again."""
    org, user = _member(email, org_name)
    members.set_blocked(org, user, False, policy.OPERATOR)
    click.echo(f"{directory.display_user(user)} can sign in again.")


@click.command("remove")
@with_appcontext
@click.argument("email")
@click.option("--org", "org_name", required=True, help="The organisation's name.")
@click.option("--yes", is_flag=True, help="Confirm: delete the user and everything stored about them.")
def remove(email: str, org_name: str, yes: bool) -> None:
    """Remove a user: sessions, stored copy, photo, email and account (needs --yes)."""
    org, user = _member(email, org_name)
    name = directory.display_user(user)
    if not yes:
        raise click.ClickException(f"Removing {name} deletes their account and everything stored about them; a "
                                   "Microsoft user who signs in again comes back as a new member (block them to keep "
                                   "them out). Run again with --yes to confirm.")
    members.remove(org, user, policy.OPERATOR)
    click.echo(f"Removed {name} from {org.name}.")
