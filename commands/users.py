"""The USERS tab's actions for operators: list, roles, block, remove."""
from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from domain import directory, members, policy

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


COMMANDS = (users, set_role, block, unblock, remove)
