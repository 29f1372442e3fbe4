"""Prompts: every prompt key in every locale, with its variables, missing translations marked,
recordings played in the page, and a "listen" button (the browser's speech synthesis).

Edits go to a draft of the locale's catalog (the catalog YAML, comments kept), checked on save
(a text may use only the variables the default locale's text has: the app fills in no others),
and reach callers when published, like flows.
"""

from __future__ import annotations

import io
import string
import time
from typing import Any

from flask import abort, redirect, render_template, request, url_for
from ruamel.yaml import YAML

from ivr.app import services
from ivr.flows.versions import DocumentVersions, StalePublish
from ivr.prompts import CatalogError
from ivr.users import Role
from ivr.web.console import access, blueprint

MAX_PROMPT_TEXT = 2000


def _versions() -> DocumentVersions:
    published = services().prompts.published
    if published is None:
        abort(503, description="prompts are served from files only")
    return published


def _catalog_text(locale: str) -> tuple[str, int]:
    """The text an edit starts from (the draft, else the live version) and its base version."""
    versions = _versions()
    draft = versions.draft(locale)
    if draft is not None:
        return draft.text, draft.base
    live = versions.live(locale)
    if live is None:
        abort(404, description=f"no catalog for {locale}")
    return live.text, live.number


def _variables(text: str) -> list[str]:
    return sorted({name for _, name, _, _ in string.Formatter().parse(text) if name})


@blueprint.get("/prompts")
@access.requires(Role.VIEWER)
def prompts() -> str:
    catalogs = services().prompts
    locales = catalogs.locales
    every_key = sorted({key for c in catalogs.catalogs.values() for key in c.prompts})
    rows = []
    for key in every_key:
        cells = []
        for locale in locales:
            catalog = catalogs.catalogs[locale]
            text = catalog.prompts.get(key)
            audio = catalog.audio.get(key)
            cells.append(
                {
                    "locale": locale,
                    "language": catalog.language,
                    "text": text,
                    "audio": url_for("public.prompt_audio", locale=locale, filename=audio)
                    if audio
                    else None,
                }
            )
        default_text = catalogs.catalogs[catalogs.default_locale].prompts.get(key, "")
        rows.append({"key": key, "variables": _variables(default_text), "cells": cells})
    drafts = _versions().drafts() if catalogs.published is not None else {}
    draft_texts = {}
    for locale, draft in drafts.items():
        try:
            draft_texts[locale] = catalogs.parse(draft.text, locale, f"{locale} draft").prompts
        except CatalogError:
            draft_texts[locale] = {}
    return render_template(
        "console/prompts.html",
        rows=rows,
        locales=locales,
        default_locale=catalogs.default_locale,
        drafts=drafts,
        draft_texts=draft_texts,
        editing=(request.args.get("locale"), request.args.get("key")),
        can_edit=access.current_session().role.allows(Role.EDITOR),
        done=request.args.get("done"),
        error=request.args.get("error"),
    )


@blueprint.post("/prompts/<locale>/<key>")
@access.requires(Role.EDITOR)
def save_prompt(locale: str, key: str) -> Any:
    """A prompt's text saved into its locale's draft, if it uses only known variables."""
    catalogs = services().prompts
    if locale not in catalogs.catalogs:
        abort(404, description=f"no catalog for {locale}")
    text = " ".join(request.form.get("text", "").split())
    if not text or len(text) > MAX_PROMPT_TEXT:
        return _back(error=f"the text of {key} must have 1 to {MAX_PROMPT_TEXT} characters")
    reference = catalogs.catalogs[catalogs.default_locale].prompts.get(key)
    if reference is None:
        abort(404, description=f"no prompt {key}")
    try:
        unknown = sorted(set(_variables(text)) - set(_variables(reference)))
    except ValueError as exc:
        return _back(error=f"{key}: {exc} (write {{{{ and }}}} for braces)")
    if unknown:
        allowed = ", ".join(f"{{{v}}}" for v in _variables(reference)) or "none"
        return _back(error=f"{key}: unknown variable(s) {', '.join(unknown)}; allowed: {allowed}")
    source, base = _catalog_text(locale)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 100
    document = yaml.load(source)
    before = document["prompts"].get(key)
    document["prompts"][key] = text
    out = io.StringIO()
    yaml.dump(document, out)
    try:
        catalogs.parse(out.getvalue(), locale, f"{locale} draft")
    except CatalogError as exc:
        return _back(error=str(exc))
    user = access.current_session().user
    _versions().save_draft(
        locale, out.getvalue(), author=user, base=base, now_ms=int(time.time() * 1000)
    )
    services().audit.record(
        user, "prompt.draft", f"{locale}:{key}", before={"text": before}, after={"text": text}
    )
    return _back(done=f"{key} ({locale}) saved to the draft")


def _back(**args: str) -> Any:
    return redirect(url_for("console.prompts", **args))


@blueprint.post("/prompts/<locale>/publish")
@access.requires(Role.EDITOR)
def publish_prompts(locale: str) -> Any:
    versions = _versions()
    draft = versions.draft(locale)
    if draft is None:
        abort(409, description=f"no draft for {locale}")
    live = versions.live(locale)
    comment = request.form.get("comment", "").strip()[:500]
    try:
        version = versions.publish(
            locale,
            draft.text,
            author=access.current_session().user,
            comment=comment,
            expect_live=draft.base,
        )
    except StalePublish as exc:
        abort(409, description=str(exc))
    services().audit.record(
        access.current_session().user,
        "prompt.publish",
        locale,
        before={"version": live.number if live else None},
        after={"version": version.number, "comment": comment},
    )
    services().prompts.refresh(force=True)
    return _back(done=f"the {locale} prompts, version {version.number}, are live")


@blueprint.post("/prompts/<locale>/discard")
@access.requires(Role.EDITOR)
def discard_prompts(locale: str) -> Any:
    if _versions().discard_draft(locale):
        services().audit.record(access.current_session().user, "prompt.draft.discard", locale)
    return _back(done=f"the {locale} draft was discarded")
