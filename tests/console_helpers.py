"""Signing in to the console from tests: users made through ivr.users, forms sent with their
CSRF token as a browser would."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
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


class _FormReader(HTMLParser):
    """The fields a browser would submit from one form: inputs, checked boxes, selected
    options, textareas (as (name, value) pairs, in order)."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.fields = form_id, False, []
        self._select: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "disabled" in a:
            return
        if tag == "input" and a.get("name") and a.get("type") not in ("submit", "file"):
            if a.get("type") != "checkbox" or "checked" in a:
                self.fields.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))
        elif tag == "textarea":
            self._textarea, self._text = a.get("name"), []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self.fields.append((self._textarea, unescape("".join(self._text)).lstrip("\n")))
            self._textarea = None


def form_fields(html: str, form_id: str) -> list[tuple[str, str]]:
    """What submitting the form `form_id` of a page would send, unchanged."""
    reader = _FormReader(form_id)
    reader.feed(html)
    return reader.fields
