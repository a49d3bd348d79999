"""The `flask --app app ...` commands for operators: the shared plumbing (one-line errors, the CLI before
configuration) here; the commands by concern in organizations.py, users.py and operations.py."""
from __future__ import annotations

import functools

import click
import sqlalchemy as sa
from flask import Flask, current_app, g
from flask.cli import ScriptInfo, with_appcontext

import configuration
import extensions
import vault
from commands import operations, organizations, users
from domain import errors

# Commands that work before the portal is configured; every other one prints the configuration's problem.
ANY_TIME = {"generate-key", "check-config"}


def init_app(app: Flask) -> None:
    for module in (organizations, users, operations):
        for command in module.COMMANDS:
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

