"""Sign-in and sign-out, with attempts limited per user and per address."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

import redis
from flask import Response, g, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ivr.app import services
from ivr.config import Rate
from ivr.users import Role
from ivr.verification.limits import Window
from ivr.web.console import access, blueprint
from ivr.web.errors import http_error_headers, problem

# Argon2 makes each guess cost ~50 ms of our CPU; these bound the guesses themselves.
SIGN_IN_PER_USER = Rate(10, 900)
SIGN_IN_PER_ADDRESS = Rate(30, 900)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of ours, never another site."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return url_for("console.home")


def _development_password_file() -> Path | None:
    """The development admin's password file while it is there: it goes once the password it
    holds is changed (ivr.users), in this process or any other."""
    path = services().console_admin_password_file
    return path if path is not None and path.is_file() else None


@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """The sign-in form (Username, Password, Sign in)."""
    pre_session = request.cookies.get(access.PRE_SESSION_COOKIE) or access.new_pre_session()
    error = None
    status = 200
    username = ""
    if request.method == "POST":
        username = request.form.get("username", "").strip().lower()[:64]
        password = request.form.get("password", "")[:1024]
        submitted = request.form.get(access.CSRF_FIELD, "")
        expected = access.sign_in_csrf_token(pre_session)
        if not hmac.compare_digest(submitted.encode(), expected.encode()):
            error, status = "The form was out of date. Please sign in again.", 400
        else:
            # Every attempt is counted while it runs (parallel guesses all count); one that
            # succeeds is taken back, so a call center's staff behind one address can all
            # sign in, and only wrong passwords use up the limits.
            limiter, attempt = services().verifications.limiter, secrets.token_hex(8)
            windows = [
                Window("console-sign-in-user", username or "-", SIGN_IN_PER_USER, exact=True),
                Window(
                    "console-sign-in-address",
                    request.remote_addr or "-",
                    SIGN_IN_PER_ADDRESS,
                    exact=True,
                ),
            ]
            refusal, _counted = limiter.acquire(windows, member=attempt)
            if refusal is not None:
                minutes = max(1, -(-refusal.retry_after_seconds // 60))
                error = f"Too many sign-in attempts. Try again in {minutes} minute(s)."
                status = 429
            else:
                user = services().users.authenticate(username, password)
                if user is None:
                    error, status = "The username or password is not right.", 401
                else:
                    limiter.forget(windows, attempt)
                    session = services().users.open_session(user)
                    response = redirect(_safe_next(request.args.get("next")))
                    access.set_session_cookie(response, session)
                    response.delete_cookie(access.PRE_SESSION_COOKIE, path="/console")
                    return response
    elif access.current_session_or_none() is not None:
        return redirect(_safe_next(request.args.get("next")))
    body = render_template(
        "console/sign_in.html",
        error=error,
        username=username,
        sign_in_token=access.sign_in_csrf_token(pre_session),
        dev_password_file=_development_password_file(),
    )
    response = make_response(body, status)
    response.set_cookie(
        access.PRE_SESSION_COOKIE,
        pre_session,
        max_age=3600,
        path="/console",
        httponly=True,
        secure=access.secure_cookies(),
        samesite="Lax",
    )
    return response


@blueprint.post("/sign-out")
@access.requires(Role.VIEWER)
def sign_out() -> Response:
    services().users.close_session(access.current_session().token)
    response = redirect(url_for("console.sign_in"))
    access.clear_session_cookie(response)
    return response


@blueprint.get("/")
@access.requires(Role.VIEWER)
def home() -> Response:
    return redirect(url_for("console.flows_list"))


@blueprint.errorhandler(HTTPException)
def console_error(exc: HTTPException) -> Any:
    """Errors as a page (or JSON for the page scripts), in plain words."""
    status = exc.code or 500
    headers = http_error_headers(exc)  # `Allow` on a 405
    if access.wants_json():
        # A problem as the API answers (RFC 9457); `error` is what the page scripts show.
        detail = exc.description or exc.name
        reason = exc.name.lower().replace(" ", "_")
        return problem(status, reason, exc.name, detail, headers=headers, error=detail)
    page = render_template("console/error.html", status=status, message=exc.description)
    return page, status, headers


def unrouted_error(exc: HTTPException) -> Response:
    """A 404 or 405 under /console that matched no console route: the console's own page
    (signed in or out, as the visitor is) with its security headers, not the API's problem."""
    try:
        access.find_session()
    except redis.RedisError:
        g.console_session = None  # the page says it signed out; the error is what matters
    return access.security_headers(make_response(console_error(exc)))
