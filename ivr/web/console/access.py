"""Who may see and do what in the console: sessions, roles, CSRF and the security headers.

Sessions are server-side (ivr.users), so a sign-out or a deleted user ends them on every host.
The cookie holds only the session token: HttpOnly, SameSite=Lax, Secure behind https, and
scoped to /console. Every state-changing request carries the session's CSRF token (a form
field, or the X-CSRF-Token header for the page scripts' fetches); the sign-in form, which has
no session yet, is bound to a short-lived pre-session cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, abort, current_app, g, redirect, request, url_for

from ivr.app import services
from ivr.users import Role, Session
from ivr.web.console import blueprint

SESSION_COOKIE = "ivr_console"
PRE_SESSION_COOKIE = "ivr_console_signin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
OPEN_ENDPOINTS = {"console.sign_in"}  # the only page a signed-out visitor may see
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
LARGE_UPLOADS = {  # bytes: the file's limit, and room for the form around it
    "console.import_customers": 2 * 1024 * 1024 + 64 * 1024,
    "console.upload_recording": 5 * 1024 * 1024 + 64 * 1024,
}

# No inline script or style anywhere: the page scripts and the stylesheet are files of ours.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)

View = TypeVar("View", bound=Callable[..., Any])


def current_session() -> Session:
    """The signed-in user's session (every view but sign-in runs with one)."""
    return g.console_session


def current_session_or_none() -> Session | None:
    return getattr(g, "console_session", None)


def requires(role: Role) -> Callable[[View], View]:
    """Only users whose role allows `role` may use this view (viewer < editor < admin)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            session = getattr(g, "console_session", None)
            if session is None or not session.role.allows(role):
                abort(403, description=f"this needs the {role} role")
            return view(*args, **kwargs)

        guarded.required_role = role  # type: ignore[attr-defined] - the access tests read it
        return guarded  # type: ignore[return-value]

    return decorate


def answers_json(view: View) -> View:
    """Mark a view the page scripts fetch: its errors are JSON problems whatever the request
    asked for (a script cannot read an HTML error page)."""
    view.answers_json = True  # type: ignore[attr-defined] - read by wants_json
    return view


def secure_cookies() -> bool:
    base = services().settings.public_base_url or ""
    return base.startswith("https://")


def set_session_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=max(1, (session.expires_at - session.created_at) // 1000),
        path="/console",
        httponly=True,
        secure=secure_cookies(),
        samesite="Lax",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="Lax")


def sign_in_csrf_token(pre_session: str) -> str:
    """The sign-in form's token: bound to the visitor's pre-session cookie by our key."""
    key = hashlib.sha256(services().secrets.secret_key + b"console-sign-in").digest()
    return hmac.new(key, pre_session.encode(), hashlib.sha256).hexdigest()


def new_pre_session() -> str:
    return secrets.token_urlsafe(24)


def _submitted_csrf() -> str:
    return request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")


def wants_json() -> bool:
    """Whether an error should be answered as JSON: a view the page scripts fetch, or a
    request that asks for or sends JSON."""
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "answers_json", False):
        return True
    return request.accept_mimetypes.best == "application/json" or request.is_json


def audit(action: str, target: str, *, before: Any = None, after: Any = None) -> None:
    """Record a change in the audit log as done by the signed-in user."""
    services().audit.record(current_session().user, action, target, before=before, after=after)


def find_session() -> Session | None:
    """The visitor's session from its cookie (None when signed out), kept in `g` for views
    and templates."""
    token = request.cookies.get(SESSION_COOKIE, "")
    g.console_session = services().users.session(token) if token else None
    return g.console_session


@blueprint.before_request
def load_session() -> Response | None:
    """Find the visitor's session; a signed-out visitor sees only the sign-in page. Then, for
    a state change, the CSRF token."""
    if request.endpoint in LARGE_UPLOADS:  # the app's limit is for webhooks and the API
        request.max_content_length = LARGE_UPLOADS[request.endpoint]
        request.max_form_memory_size = LARGE_UPLOADS[request.endpoint]
    session = find_session()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if session is None:
        if wants_json() or request.method in _UNSAFE_METHODS:
            abort(401, description="sign in first")
        return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
    if request.method in _UNSAFE_METHODS and not hmac.compare_digest(
        _submitted_csrf().encode(), session.csrf_token.encode()
    ):
        abort(403, description="the form is out of date (CSRF token missing or wrong); reload it")
    return None


@blueprint.after_request
def security_headers(response: Response) -> Response:
    """The same strict headers on every console answer, errors included."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@blueprint.app_context_processor
def console_context() -> dict[str, Any]:
    """What every console template may use: the session, its CSRF token, the role names."""
    session = getattr(g, "console_session", None)
    return {
        "console_session": session,
        "csrf_token": session.csrf_token if session else "",
        "Role": Role,
        "app_name": services().settings.app_name,
        "console_endpoints": current_app.view_functions.keys(),
    }
