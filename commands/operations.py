"""Running the portal: keys, configuration check, demo, sweeping, the audit log's export."""
from __future__ import annotations

import json
import logging

import click
from flask import current_app, url_for
from flask.cli import with_appcontext
from werkzeug.routing import BuildError

import configuration
import demo as demo_data
import entra
import extensions
import vault
from domain import auditlog, directory, keys, policy, sessions
from models import db

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
               "with the password %s." % (server_name, demo_data.DEMO_PASSWORD))
    click.echo("A second organisation, Fabrikam Research, has admin@fabrikam.example with the same password.")
    click.echo("Then: Settings → SECURITY → Activate SSO, and sign in at the emulated Microsoft page.")
    click.echo("User provisioning (SCIM): Settings → SECURITY → Generate token, then run a cycle from the emulated "
               "Entra admin centre's Provisioning page, %s (sign in there as Nadia Okafor)."
               % demo_data.provisioning_page(app))
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


COMMANDS = (generate_key, check_config, demo, rotate_keys, sweep_sessions, audit)
