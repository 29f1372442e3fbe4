"""Verifications: the last 24 hours and 7 days as charts and tables, and the recent ones
(numbers masked to their last digits, never a code), filterable, with a CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

from flask import Response, render_template, request

from ivr import phone
from ivr.app import services
from ivr.users import Role
from ivr.verification.models import Channel, Status, Verification
from ivr.verification.stats import PERIODS, StatsSummary
from ivr.web.console import access, blueprint

CHART_WIDTH, CHART_HEIGHT = 720, 180


def _chart(summary: StatsSummary) -> dict[str, Any]:
    """Bars of started verifications per hour, approved ones drawn inside them."""
    points = summary.series
    if summary.period == "7d":  # a bar a day
        days = [points[i : i + 24] for i in range(0, len(points), 24)]
        points = [
            (day[0][0], sum(p[1] for p in day), sum(p[2] for p in day), sum(p[3] for p in day))
            for day in days
        ]
    peak = max((p[1] for p in points), default=0) or 1
    step = CHART_WIDTH / max(1, len(points))
    bars = []
    for index, (at, started, delivered, approved) in enumerate(points):
        bars.append(
            {
                "x": round(index * step + 2, 1),
                "width": round(max(1.0, step - 4), 1),
                "started_h": round(CHART_HEIGHT * started / peak, 1),
                "approved_h": round(CHART_HEIGHT * approved / peak, 1),
                "at": at,
                "started": started,
                "delivered": delivered,
                "approved": approved,
            }
        )
    return {"bars": bars, "peak": peak, "width": CHART_WIDTH, "height": CHART_HEIGHT}


def _recent(status: str | None, channel: str | None, limit: int = 200) -> list[Verification]:
    store = services().verifications.store
    stats = services().verifications.stats
    found = []
    for sid in stats.recent_sids(limit=2000) if stats else []:
        verification = store.get(sid)
        if verification is None:
            continue
        if status and str(verification.status) != status:
            continue
        if channel and str(verification.channel) != channel:
            continue
        found.append(verification)
        if len(found) >= limit:
            break
    return found


def _row(v: Verification) -> dict[str, Any]:
    return {
        "sid": v.sid,
        "to": phone.masked(v.to),
        "channel": str(v.channel),
        "status": str(v.status),
        "created_at": v.created_at,
        "updated_at": v.updated_at or v.created_at,
    }


@blueprint.get("/verifications")
@access.requires(Role.VIEWER)
def verifications() -> str:
    period = request.args.get("period", "24h")
    period = period if period in PERIODS else "24h"
    status = request.args.get("status") or None
    channel = request.args.get("channel") or None
    stats = services().verifications.stats
    summary = stats.summary(period) if stats else StatsSummary(period)
    return render_template(
        "console/verifications.html",
        summary=summary,
        chart=_chart(summary),
        period=period,
        rows=[_row(v) for v in _recent(status, channel)],
        status=status,
        channel=channel,
        statuses=[str(s) for s in Status],
        channels=[str(c) for c in Channel],
    )


@blueprint.get("/verifications.csv")
@access.requires(Role.VIEWER)
def verifications_csv() -> Response:
    rows = [_row(v) for v in _recent(request.args.get("status"), request.args.get("channel"), 2000)]
    out = io.StringIO()
    writer = csv.DictWriter(out, ["sid", "to", "channel", "status", "created_at", "updated_at"])
    writer.writeheader()
    for row in rows:  # a leading + or = would be a formula to a spreadsheet (CSV injection)
        writer.writerow({k: f"'{v}" if str(v)[:1] in "=+-@" else v for k, v in row.items()})
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=verifications.csv"},
    )
