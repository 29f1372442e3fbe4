"""`ivr users create | list | delete | password | role`: the console's users, from a shell.

Every change goes to the audit log as `cli:<login name>`. A password comes from standard input
when it is not a terminal (one line), so scripts can pipe it in; otherwise it is asked twice.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING

import click

from ivr.users import Role, UserError, valid_name

if TYPE_CHECKING:
    from ivr.users import AuditLog, Users

ROLE_CHOICE = click.Choice([role.value for role in Role], case_sensitive=False)


def _services() -> tuple[Users, AuditLog]:
    from ivr.cli import _app  # here: ivr.cli imports this module

    ivr = _app().extensions["ivr"]
    return ivr.users, ivr.audit


def cli_actor() -> str:
    """Who the audit log names for a change made through `ivr`: cli:<login name>."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name: a container's bare uid, say
        login = "unknown"
    return f"cli:{login}"


def _password() -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline()
    if not line:
        raise click.ClickException("no password on standard input")
    return line.removesuffix("\n").removesuffix("\r")


def _refused(exc: UserError) -> click.ClickException:
    return click.ClickException(exc.detail)


@click.group()
def users() -> None:
    """Console users: viewers see, editors change flows, prompts and customers, admins also
    manage users."""


@users.command("create")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, required=True, help="What the user may do.")
def users_create(name: str, role: str) -> None:
    """Create a console user; the password comes from stdin or is asked for twice."""
    try:
        name = valid_name(name)
    except UserError as exc:
        raise _refused(exc) from None
    accounts, audit = _services()
    if accounts.get(name) is not None:  # before asking for a password that would be wasted
        raise click.ClickException(f"user {name} already exists")
    try:
        user = accounts.create(name, role, _password())
    except UserError as exc:
        raise _refused(exc) from None
    audit.record(cli_actor(), "user.create", user.name, after={"role": user.role.value})
    click.echo(f"created {user.name} ({user.role})")


@users.command("list")
def users_list() -> None:
    """Every user: name, role, created, password last changed (UTC)."""
    from ivr.verification.models import iso_time

    accounts, _ = _services()
    for user in accounts.list():
        click.echo(
            f"{user.name}\t{user.role}\t{iso_time(user.created_at)}"
            f"\t{iso_time(user.password_changed_at)}"
        )


@users.command("delete")
@click.argument("name")
def users_delete(name: str) -> None:
    """Delete a user; their sessions end at once. The last admin cannot be deleted."""
    accounts, audit = _services()
    user = accounts.get(name)
    try:
        deleted = user is not None and accounts.delete(user.name)
    except UserError as exc:
        raise _refused(exc) from None
    if not deleted or user is None:
        raise click.ClickException(f"no user {name.strip().lower()}")
    audit.record(cli_actor(), "user.delete", user.name, before={"role": user.role.value})
    click.echo(f"deleted {user.name}; their sessions ended")


@users.command("password")
@click.argument("name")
def users_password(name: str) -> None:
    """Set a user's password (stdin, or asked for twice); their sessions end."""
    accounts, audit = _services()
    if accounts.get(name) is None:
        raise click.ClickException(f"no user {name.strip().lower()}")
    try:
        user = accounts.set_password(name, _password())
    except UserError as exc:
        raise _refused(exc) from None
    audit.record(cli_actor(), "user.password", user.name)  # what changed, never the password
    click.echo(f"password of {user.name} changed; their sessions ended")


@users.command("role")
@click.argument("name")
@click.argument("role", type=ROLE_CHOICE)
def users_role(name: str, role: str) -> None:
    """Give a user another role (admin, editor or viewer); it applies to open sessions too."""
    accounts, audit = _services()
    before = accounts.get(name)
    if before is None:
        raise click.ClickException(f"no user {name.strip().lower()}")
    if before.role == role.lower():
        click.echo(f"{before.name} is already {before.role}")
        return
    try:
        user = accounts.set_role(before.name, role)
    except UserError as exc:
        raise _refused(exc) from None
    audit.record(
        cli_actor(),
        "user.role",
        user.name,
        before={"role": before.role.value},
        after={"role": user.role.value},
    )
    click.echo(f"{user.name} is now {user.role}")
