"""Signing in to the console from tests: users made through ivr.users, forms sent with their
CSRF token as a browser would."""

from __future__ import annotations

import re
from typing import Any

from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

PASSWORD = "correct horse battery staple"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def make_user(app: Flask, name: str, role: str, password: str = PASSWORD) -> None:
    users = app.extensions["ivr"].users
    users.hasher = CHEAP_HASHER
    users.create(name, role, password)


def sign_in(app: Flask, name: str, password: str = PASSWORD) -> FlaskClient:
    """A client with a console session for `name`."""
    client = app.test_client()
    page = client.get("/console/sign-in")
    response = client.post(
        "/console/sign-in",
        data={"username": name, "password": password, "csrf_token": csrf_of(page.text)},
    )
    assert response.status_code == 302, response.text
    return client


def session_csrf(client: FlaskClient) -> str:
    return csrf_of(client.get("/console/flows").text)


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
    """POST a console form with the session's CSRF token."""
    return client.post(path, data={"csrf_token": session_csrf(client), **(data or {})}, **kw)
