"""Users (admins only): create, change role, reset password, delete; and the audit log of
every change made in the console or through `ivr` commands."""

from __future__ import annotations

import secrets
from typing import Any

from flask import abort, redirect, render_template, request, url_for

from ivr.app import services
from ivr.users import Role, UserError
from ivr.web.console import access, blueprint

_MAX_AUDIT_PAGE = 10_000  # 100 entries a page: the log keeps 10,000 entries at most


def _render(**extra: Any) -> Any:
    status = extra.pop("status", 200)
    body = render_template(
        "console/users.html",
        users=services().users.list(),
        roles=[str(role) for role in Role],
        **extra,
    )
    return body if status == 200 else (body, status)


@blueprint.get("/users")
@access.requires(Role.ADMIN)
def users() -> Any:
    return _render(done=request.args.get("done"))


@blueprint.post("/users")
@access.requires(Role.ADMIN)
def create_user() -> Any:
    name, role = request.form.get("name", ""), request.form.get("role", "")
    password = request.form.get("password") or secrets.token_urlsafe(15)
    try:
        user = services().users.create(name, role, password)
    except UserError as exc:
        return _render(form_error=exc.detail, status=422)
    access.audit("user.create", user.name, after={"role": str(user.role)})
    shown = None if request.form.get("password") else password
    return _render(done=f"user {user.name} created", new_password=(user.name, shown))


@blueprint.post("/users/<name>/role")
@access.requires(Role.ADMIN)
def change_role(name: str) -> Any:
    before = services().users.get(name)
    if before is None:
        abort(404, description=f"no user {name}")
    try:
        user = services().users.set_role(name, request.form.get("role", ""))
    except UserError as exc:
        return _render(form_error=exc.detail, status=422)
    access.audit(
        "user.role", user.name, before={"role": str(before.role)}, after={"role": str(user.role)}
    )
    return redirect(url_for("console.users", done=f"{user.name} is now {user.role}"))


@blueprint.post("/users/<name>/password")
@access.requires(Role.ADMIN)
def reset_password(name: str) -> Any:
    password = secrets.token_urlsafe(15)
    try:
        user = services().users.set_password(name, password)
    except UserError as exc:
        abort(404, description=exc.detail)
    access.audit("user.password", user.name)  # never the password
    return _render(
        done=f"a new password for {user.name}; their sessions ended",
        new_password=(user.name, password),
    )


@blueprint.post("/users/<name>/delete")
@access.requires(Role.ADMIN)
def delete_user(name: str) -> Any:
    before = services().users.get(name)
    try:
        deleted = services().users.delete(name)
    except UserError as exc:
        return _render(form_error=exc.detail, status=422)
    if not deleted or before is None:
        abort(404, description=f"no user {name}")
    access.audit("user.delete", name, before={"role": str(before.role)})
    return redirect(url_for("console.users", done=f"{name} deleted; their sessions ended"))


@blueprint.get("/audit")
@access.requires(Role.ADMIN)
def audit() -> str:
    # Bounded: Redis refuses list offsets past 2**63, which is no reason for a 503.
    page = min(max(0, request.args.get("page", 0, type=int)), _MAX_AUDIT_PAGE)
    entries = services().audit.entries(limit=100, offset=page * 100)
    return render_template("console/audit.html", entries=entries, page=page)
