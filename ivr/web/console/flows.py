"""Flows: the list, a flow as a diagram with a form per node, its YAML, the draft's diff,
publishing, history and rollback.

Every change goes to the flow's draft, checked on every save with the checks of `ivr flows
check` (PublishedFlows.check); a draft never serves calls. Publish makes the draft live for
every worker on every host (the library polls the publish generation once a second).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for

from ivr.app import services
from ivr.flows.library import PublishedFlows
from ivr.flows.loader import FlowFileError, LoadedFlow, parse_flow_text
from ivr.flows.problems import Problem
from ivr.flows.versions import Draft, StalePublish, Version
from ivr.users import Role
from ivr.web.console import access, blueprint
from ivr.web.console import prompts as console_prompts
from ivr.web.console.diffs import diff_lines
from ivr.web.console.node_forms import (
    FormError,
    defaults_of,
    form_fields,
    replace_node,
    submitted_node,
)

MAX_FLOW_TEXT = 200_000  # characters: far above any real flow, far below the request limit


def _library() -> PublishedFlows:
    library = services().flows.library
    if not isinstance(library, PublishedFlows):
        abort(503, description="flows are served from files only (no Redis)")
    return library


def _actor() -> str:
    return access.current_session().user


@dataclass
class FlowView:
    """What the pages show of one flow: live and draft, and what the checks say of each."""

    name: str
    live: Version | None
    served: LoadedFlow | None
    draft: Draft | None
    draft_problems: list[Problem]
    draft_flow: Any  # the draft's Flow when it parses, else None

    @property
    def text(self) -> str:
        """What an editor works on: the draft when there is one, else the live version."""
        if self.draft is not None:
            return self.draft.text
        return self.live.text if self.live else ""

    @property
    def shown_flow(self) -> Any:
        if self.draft is not None and self.draft_flow is not None:
            return self.draft_flow
        return self.served.flow if self.served else None

    @property
    def draft_errors(self) -> list[Problem]:
        return [p for p in self.draft_problems if p.severity == "error"]


def _flow_view(name: str) -> FlowView:
    library = _library()
    versions = library.versions
    live = versions.live(name)
    draft = versions.draft(name)
    if live is None and draft is None:
        abort(404, description=f"no flow {name!r}")
    problems: list[Problem] = []
    draft_flow = None
    if draft is not None:
        loaded, problems = library.check(name, draft.text)
        if loaded is not None:
            draft_flow = loaded.flow
        else:
            try:
                draft_flow = parse_flow_text(draft.text, name, f"{name}.yaml")[0]
            except FlowFileError:
                draft_flow = None
    return FlowView(name, live, library.served(name), draft, problems, draft_flow)


def _problems_by_node(problems: list[Problem]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for problem in problems:
        if problem.node:
            found.setdefault(problem.node, []).append(problem.message)
    return found


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the list -------------------------------------------------------------------------------------


@blueprint.get("/flows")
@access.requires(Role.VIEWER)
def flows_list() -> str:
    library = _library()
    versions = library.versions
    live = versions.live_versions()
    drafts = versions.drafts()
    served = library.flows
    refused = library.refused
    rows = []
    for name in sorted(set(live) | set(drafts)):
        loaded = served.get(name)
        errors = [
            str(p)
            for key, found in refused.items()
            if str(key).split("/")[-1].split("@")[0].removesuffix(".yaml") == name
            for p in found
            if p.severity == "error"
        ]
        rows.append(
            {
                "name": name,
                "live": live.get(name),
                "flow": loaded.flow if loaded else None,
                "warnings": loaded.warnings if loaded else [],
                "errors": errors,
                "draft": drafts.get(name),
            }
        )
    return render_template("console/flows_list.html", rows=rows)


# -- one flow -------------------------------------------------------------------------------------


@blueprint.get("/flows/<name>")
@access.requires(Role.VIEWER)
def flow_page(name: str) -> str:
    return _render_flow(_flow_view(name), request.args.get("node"))


def _render_flow(
    view: FlowView,
    node_id: str | None,
    *,
    form_error: str | None = None,
    form_problems: list[Problem] | None = None,
    status: int = 200,
) -> Any:
    from ivr.flows.diagram import render_svg

    flow = view.shown_flow
    node = flow.nodes.get(node_id) if flow is not None and node_id else None
    diagram = None
    if flow is not None:
        diagram = render_svg(
            flow,
            node_href=lambda nid: (
                url_for("console.flow_page", name=view.name, node=nid) + "#node-form"
            ),
            problems=_problems_by_node(view.draft_problems),
            selected=node_id,
        )
    fields = form_fields(node, list(flow.nodes)) if node is not None else []
    prompts = services().prompts
    body = render_template(
        "console/flow.html",
        view=view,
        flow=flow,
        diagram=diagram,
        node_id=node_id if node is not None else None,
        node=node,
        fields=fields,
        prompt_keys=sorted({k for c in prompts.catalogs.values() for k in c.prompts}),
        locales=prompts.locales,
        prompt_texts=_prompt_texts(fields),
        form_error=form_error,
        form_problems=form_problems or [],
        can_edit=access.current_session().role.allows(Role.EDITOR),
        saved=request.args.get("saved"),
        saved_prompts=[p for p in request.args.get("prompts", "").split(",") if p],
    )
    return body if status == 200 else (body, status)


def _prompt_texts(fields: list[Any]) -> dict[str, dict[str, str]]:
    """Per prompt key named in the form, its text in every locale as it will next be said
    (the prompt draft's, else the live one; a missing translation: empty)."""
    prompts = services().prompts
    keys = set()
    for form_field in fields:
        if form_field.kind == "prompt" and form_field.value:
            keys.add(form_field.value)
        elif form_field.kind == "prompts":
            keys.update(form_field.value)
    return {
        key: {locale: console_prompts.current_text(locale, key) or "" for locale in prompts.locales}
        for key in sorted(keys)
    }


PROMPT_TEXT_FIELD = "prompt_text"  # prompt_text:<key>:<locale>, the node form's text boxes


def _submitted_prompt_texts() -> dict[tuple[str, str], str]:
    """(locale, key) -> text of every prompt text box that changes what a caller hears. Boxes
    left empty where there was no translation stay untranslated."""
    prompts = services().prompts
    known_keys = prompts.catalogs[prompts.default_locale].prompts
    changed = {}
    for field_name, value in request.form.items():
        kind, _, rest = field_name.partition(":")
        key, _, locale = rest.rpartition(":")
        if kind != PROMPT_TEXT_FIELD or key not in known_keys or locale not in prompts.catalogs:
            continue
        current = console_prompts.current_text(locale, key)
        if " ".join(value.split()) != (current or "") and (value.strip() or current):
            changed[(locale, key)] = value
    return changed


@blueprint.post("/flows/<name>/nodes/<node_id>")
@access.requires(Role.EDITOR)
def save_node(name: str, node_id: str) -> Any:
    """A node form saved: the node into the flow's draft if the whole flow still passes the
    checks, and its prompts' texts into their locales' prompt drafts; nothing when any of it
    is refused."""
    view = _flow_view(name)
    flow = view.shown_flow
    if flow is None or node_id not in flow.nodes:
        abort(404, description=f"no node {node_id!r} in flow {name!r}")
    node = flow.nodes[node_id]
    form = {key: request.form.getlist(key) for key in request.form}
    texts = _submitted_prompt_texts()
    try:
        text = replace_node(view.text, node_id, submitted_node(node, form), defaults_of(node))
        for (_locale, key), submitted in texts.items():
            console_prompts.checked_text(key, submitted)
    except FormError as exc:
        return _render_flow(view, node_id, form_error=f"{exc.field}: {exc}", status=422)
    except console_prompts.PromptRefused as exc:
        return _render_flow(view, node_id, form_error=str(exc), status=422)
    loaded, problems = _library().check(name, text)
    if loaded is None:
        errors = [p for p in problems if p.severity == "error"]
        return _render_flow(
            view, node_id, form_error="The change was not saved.", form_problems=errors, status=422
        )
    if text != view.text:
        _save_draft(view, text, f"node {node_id}")
    for (locale, key), submitted in texts.items():
        console_prompts.draft_text(locale, key, submitted)
    drafted = ",".join(sorted({locale for locale, _ in texts}))
    return redirect(
        url_for("console.flow_page", name=name, node=node_id, saved="node", prompts=drafted or None)
    )


def _save_draft(view: FlowView, text: str, what: str) -> None:
    versions = _library().versions
    base = view.draft.base if view.draft else (view.live.number if view.live else 0)
    before = view.draft.text if view.draft else (view.live.text if view.live else "")
    versions.save_draft(view.name, text, author=_actor(), base=base, now_ms=_now_ms())
    services().audit.record(
        _actor(),
        "flow.draft",
        view.name,
        before={"what": what, "diff": diff_lines(before, text, context=0)},
        after={"base_version": base},
    )


# -- YAML -----------------------------------------------------------------------------------------


@blueprint.get("/flows/<name>/yaml")
@access.requires(Role.VIEWER)
def flow_yaml(name: str) -> str:
    view = _flow_view(name)
    return _render_yaml(view, view.text, view.draft_problems)


def _render_yaml(view: FlowView, text: str, problems: list[Problem], status: int = 200) -> Any:
    by_line: dict[int, list[Problem]] = {}
    for problem in problems:
        by_line.setdefault(problem.line or 0, []).append(problem)
    body = render_template(
        "console/flow_yaml.html",
        view=view,
        text=text,
        lines=text.splitlines(),
        problems=problems,
        by_line=by_line,
        can_edit=access.current_session().role.allows(Role.EDITOR),
        saved=request.args.get("saved"),
    )
    return body if status == 200 else (body, status)


@blueprint.post("/flows/<name>/yaml")
@access.requires(Role.EDITOR)
def save_yaml(name: str) -> Any:
    """The YAML saved as the draft, errors and all (shown beside their lines; publish waits)."""
    view = _flow_view(name)
    text = request.form.get("text", "").replace("\r\n", "\n")
    if len(text) > MAX_FLOW_TEXT:
        abort(413, description="that flow is too long")
    if not text.strip():
        return _render_yaml(view, text, [Problem("error", "the flow is empty")], status=422)
    _save_draft(view, text if text.endswith("\n") else text + "\n", "yaml")
    return redirect(url_for("console.flow_yaml", name=name, saved="yaml"))


# -- draft: diff, publish, discard ----------------------------------------------------------------


@blueprint.get("/flows/<name>/diff")
@access.requires(Role.VIEWER)
def flow_diff(name: str) -> str:
    view = _flow_view(name)
    live_text = view.live.text if view.live else ""
    lines = diff_lines(live_text, view.draft.text) if view.draft else []
    return render_template("console/flow_diff.html", view=view, diff=lines)


@blueprint.post("/flows/<name>/publish")
@access.requires(Role.EDITOR)
def publish(name: str) -> Any:
    view = _flow_view(name)
    if view.draft is None:
        abort(409, description="there is no draft to publish")
    if view.draft_errors:
        return redirect(url_for("console.flow_page", name=name, refused="errors"))
    comment = request.form.get("comment", "").strip()[:500]
    versions = _library().versions
    try:
        version = versions.publish(
            name,
            view.draft.text,
            author=_actor(),
            comment=comment,
            expect_live=view.draft.base,
        )
    except StalePublish as exc:
        abort(409, description=f"{exc}: open the diff to see what changed, then save again")
    services().audit.record(
        _actor(),
        "flow.publish",
        name,
        before={"version": view.live.number if view.live else None},
        after={"version": version.number, "comment": comment},
    )
    _library().refresh(force=True)
    return redirect(url_for("console.flow_history", name=name, published=version.number))


@blueprint.post("/flows/<name>/discard")
@access.requires(Role.EDITOR)
def discard(name: str) -> Response:
    view = _flow_view(name)
    if _library().versions.discard_draft(name):
        services().audit.record(
            _actor(), "flow.draft.discard", name, before={"base_version": view.draft.base}
        )
    return redirect(url_for("console.flow_page", name=name))


# -- history and rollback -------------------------------------------------------------------------


@blueprint.get("/flows/<name>/history")
@access.requires(Role.VIEWER)
def flow_history(name: str) -> str:
    view = _flow_view(name)
    history = _library().versions.history(name)
    return render_template(
        "console/flow_history.html",
        view=view,
        history=history,
        published=request.args.get("published"),
        rolled_back=request.args.get("rolled_back"),
        can_edit=access.current_session().role.allows(Role.EDITOR),
    )


@blueprint.post("/flows/<name>/rollback/<int:number>")
@access.requires(Role.EDITOR)
def rollback(name: str, number: int) -> Response:
    view = _flow_view(name)
    versions = _library().versions
    try:
        version = versions.rollback(name, number, author=_actor())
    except LookupError as exc:
        abort(404, description=str(exc))
    services().audit.record(
        _actor(),
        "flow.rollback",
        name,
        before={"version": view.live.number if view.live else None},
        after={"version": version.number, "copy_of": number},
    )
    _library().refresh(force=True)
    return redirect(url_for("console.flow_history", name=name, rolled_back=version.number))
