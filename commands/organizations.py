"""Commands on organisations, their domains and their password accounts."""
from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

import extensions
from domain import directory, passwords, policy, signin

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


COMMANDS = (init_db, orgs, create_org, rename_org, add_domain, remove_domain, delete_org, create_admin, set_password,
            deactivate_sso)
