"""The console: web pages where a call-center team sees, changes, tries and publishes its IVR.

One views module per page family (GOV.UK Notify's admin layout), server-rendered Jinja, a
permission decorator on every view (`@requires(Role.EDITOR)`), and only small scripts of our
own. Everything under /console except the sign-in page needs a session; its assets live under
/assets/console so that even they say nothing to a signed-out visitor beyond the sign-in page.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask

blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")
assets = Blueprint(
    "console_assets", __name__, static_folder="static", static_url_path="/assets/console"
)


@blueprint.app_template_filter("iso_time")
def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 (for <time datetime>)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@blueprint.app_template_filter("local_time")
def local_time(ms: int) -> str:
    """Milliseconds since the epoch as people read them (UTC: every host says the same)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def init_app(app: Flask) -> None:
    """Register the console's blueprints (views are imported for their routes)."""
    from ivr.web.console import (  # noqa: F401 - routes
        access,
        auth,
        calls,
        customers,
        flows,
        prompts,
        simulator,
        users,
        verifications,
    )
    from ivr.web.errors import answer_unrouted_errors

    app.register_blueprint(blueprint)
    app.register_blueprint(assets)
    answer_unrouted_errors(app, blueprint.url_prefix or "/console", auth.unrouted_error)
