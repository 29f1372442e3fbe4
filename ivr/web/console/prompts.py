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
from collections.abc import Callable
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from ruamel.yaml import YAML

from ivr.app import services
from ivr.flows.versions import DocumentVersions, StalePublish
from ivr.prompts import CatalogError, LocaleCatalog
from ivr.recordings import MAX_RECORDING_BYTES, RECORDING_NAME, BadRecording, RecordingsFull
from ivr.users import Role
from ivr.web.console import access, blueprint
from ivr.web.console.diffs import diff_lines
from ivr.web.public import recording_response

MAX_PROMPT_TEXT = 2000


def _versions() -> DocumentVersions:
    published = services().prompts.published
    if published is None:
        abort(503, description="prompts are served from files only")
    return published


def _versions_of(locale: str) -> DocumentVersions:
    """The versions, for a locale that has a catalog (else 404)."""
    if locale not in services().prompts.catalogs:
        abort(404, description=f"no catalog for {locale}")
    return _versions()


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


def _recording_url(name: str | None) -> str | None:
    return url_for("console.recording", name=name) if name and RECORDING_NAME.match(name) else None


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
                    "uploaded": bool(audio and RECORDING_NAME.match(audio)),
                }
            )
        default_text = catalogs.catalogs[catalogs.default_locale].prompts.get(key, "")
        rows.append({"key": key, "variables": _variables(default_text), "cells": cells})
    drafts = _versions().drafts() if catalogs.published is not None else {}
    drafted = {}  # locale -> {key: (text, recording URL or None)} where the draft differs
    for locale, draft in drafts.items():
        try:
            catalog = catalogs.parse(draft.text, locale, f"{locale} draft")
        except CatalogError:
            continue
        live = catalogs.catalogs.get(locale)
        drafted[locale] = {
            key: (text, _recording_url(catalog.audio.get(key)))
            for key, text in catalog.prompts.items()
            if live is None
            or text != live.prompts.get(key)
            or catalog.audio.get(key) != live.audio.get(key)
        }
    return render_template(
        "console/prompts.html",
        rows=rows,
        locales=locales,
        default_locale=catalogs.default_locale,
        drafts=drafts,
        drafted=drafted,
        editing=(request.args.get("locale"), request.args.get("key")),
        can_edit=access.current_session().role.allows(Role.EDITOR),
        done=request.args.get("done"),
        error=request.args.get("error"),
    )


@blueprint.post("/prompts/<locale>/<key>")
@access.requires(Role.EDITOR)
def save_prompt(locale: str, key: str) -> Any:
    """A prompt's text saved into its locale's draft, if it uses only known variables."""
    _known_prompt(locale, key)
    try:
        draft_text(locale, key, request.form.get("text", ""))
    except PromptRefused as exc:
        return _back(locale=locale, key=key, error=str(exc))
    return _back(done=f"{key} ({locale}) saved to the draft")


class PromptRefused(ValueError):
    """A prompt text that cannot serve, with the reason for the editor."""


def checked_text(key: str, submitted: str) -> str:
    """The text as it will be said (whitespace folded); PromptRefused when it is empty, too
    long, or uses a variable the default locale's text does not have (none other is filled)."""
    catalogs = services().prompts
    text = " ".join(submitted.split())
    if not text or len(text) > MAX_PROMPT_TEXT:
        raise PromptRefused(f"the text of {key} must have 1 to {MAX_PROMPT_TEXT} characters")
    reference = catalogs.catalogs[catalogs.default_locale].prompts[key]
    try:
        unknown = sorted(set(_variables(text)) - set(_variables(reference)))
    except ValueError as exc:
        raise PromptRefused(f"{key}: {exc} (write {{{{ and }}}} for braces)") from None
    if unknown:
        allowed = ", ".join(f"{{{v}}}" for v in _variables(reference)) or "none"
        raise PromptRefused(f"{key}: unknown variable(s) {', '.join(unknown)}; allowed: {allowed}")
    return text


def current_text(locale: str, key: str) -> str | None:
    """A prompt's text in the locale's draft, else its live version (None: not translated)."""
    return _draft_or_live(locale).prompts.get(key)


def draft_text(locale: str, key: str, submitted: str) -> bool:
    """Save a prompt's text into its locale's draft, audited; False when it was already so.
    PromptRefused when the text cannot serve. Used by this page and by the flow's node form."""
    text = checked_text(key, submitted)
    if current_text(locale, key) == text:
        return False
    try:
        before = _change_draft(locale, lambda document: _set_text(document, key, text))
    except CatalogError as exc:
        raise PromptRefused(str(exc)) from None
    access.audit("prompt.draft", f"{locale}:{key}", before={"text": before}, after={"text": text})
    return True


def _set_text(document: Any, key: str, text: str) -> object:
    before = document["prompts"].get(key)
    document["prompts"][key] = text
    return before


def _change_draft(locale: str, change: Callable[[Any], object]) -> object:
    """Apply `change` to the locale's catalog (its draft, else the live version), comments
    and order kept, check that the result still serves, and save it as the draft; what
    `change` returned (the value before). CatalogError when the result cannot serve."""
    source, base = _catalog_text(locale)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the lines nobody edited
    document = yaml.load(source)
    before = change(document)
    out = io.StringIO()
    yaml.dump(document, out)
    services().prompts.parse(out.getvalue(), locale, f"{locale} draft")
    _versions().save_draft(
        locale,
        out.getvalue(),
        author=access.current_session().user,
        base=base,
        now_ms=int(time.time() * 1000),
    )
    return before


def _draft_or_live(locale: str) -> LocaleCatalog:
    source, _ = _catalog_text(locale)
    return services().prompts.parse(source, locale, f"{locale} draft")


def _known_prompt(locale: str, key: str) -> None:
    catalogs = services().prompts
    if locale not in catalogs.catalogs:
        abort(404, description=f"no catalog for {locale}")
    if key not in catalogs.catalogs[catalogs.default_locale].prompts:
        abort(404, description=f"no prompt {key}")


@blueprint.post("/prompts/<locale>/<key>/recording")
@access.requires(Role.EDITOR)
def upload_recording(locale: str, key: str) -> Any:
    """A recording for one prompt in one locale, into the locale's draft: checked by its
    content, kept in Redis (every host plays it) within RECORDINGS_MAX_MB, played instead of
    the text once published."""
    _known_prompt(locale, key)
    upload = request.files.get("recording")
    if upload is None or not upload.filename:
        return _back(error="choose a WAV or MP3 file to upload", locale=locale, key=key)
    if key not in _draft_or_live(locale).prompts:
        return _back(
            error=f"write the {locale} text of {key} first: it is the recording's transcript",
            locale=locale,
            key=key,
        )
    data = upload.stream.read(MAX_RECORDING_BYTES + 1)
    try:
        recording = services().recordings.store(data, uploaded_by=access.current_session().user)
    except (BadRecording, RecordingsFull) as exc:
        return _back(error=f"{upload.filename}: {exc}", locale=locale, key=key)

    def set_recording(document: Any) -> object:
        recordings = document.setdefault("recordings", {})
        before = recordings.get(key)
        recordings[key] = recording.name
        return before

    try:
        before = _change_draft(locale, set_recording)
    except CatalogError as exc:
        return _back(error=str(exc), locale=locale, key=key)
    access.audit(
        "prompt.recording",
        f"{locale}:{key}",
        before={"recording": before},
        after={"recording": recording.name, "seconds": recording.seconds, "file": upload.filename},
    )
    return _back(
        done=f"the recording of {key} ({locale}, {recording.seconds:g} s) was saved to the draft"
    )


@blueprint.post("/prompts/<locale>/<key>/recording/remove")
@access.requires(Role.EDITOR)
def remove_recording(locale: str, key: str) -> Any:
    """The uploaded recording taken out of the draft: the text is spoken again once published."""
    _known_prompt(locale, key)

    def drop_recording(document: Any) -> object:
        recordings = document.get("recordings") or {}
        before = recordings.pop(key, None)
        if not recordings and "recordings" in document:
            del document["recordings"]
        return before

    try:
        before = _change_draft(locale, drop_recording)
    except CatalogError as exc:
        return _back(error=str(exc), locale=locale, key=key)
    if before is None:
        return _back(error=f"{key} ({locale}) has no uploaded recording", locale=locale, key=key)
    access.audit(
        "prompt.recording.remove",
        f"{locale}:{key}",
        before={"recording": before},
        after={"recording": None},
    )
    return _back(done=f"the recording of {key} ({locale}) was removed from the draft")


@blueprint.get("/recordings/<name>")
@access.requires(Role.VIEWER)
def recording(name: str) -> Response:
    """Any uploaded recording, drafts' included, for the page's player."""
    return recording_response(name)


def _back(**args: str) -> Any:
    """Back to the page; with the cell's locale and key, to its edit form (after a refusal)."""
    anchor = "edit-form" if "key" in args else None
    return redirect(url_for("console.prompts", _anchor=anchor, **args))


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
    access.audit(
        "prompt.publish",
        locale,
        before={"version": live.number if live else None},
        after={"version": version.number, "comment": comment},
    )
    services().prompts.refresh(force=True)
    return _back(done=f"the {locale} prompts, version {version.number}, are live")


@blueprint.get("/prompts/<locale>/diff")
@access.requires(Role.VIEWER)
def prompts_diff(locale: str) -> str:
    """A locale's draft against its live version, line by line (the catalog's YAML)."""
    versions = _versions_of(locale)
    draft, live = versions.draft(locale), versions.live(locale)
    lines = diff_lines(live.text if live else "", draft.text) if draft else []
    return render_template("console/prompts_diff.html", locale=locale, draft=draft, diff=lines)


@blueprint.get("/prompts/<locale>/history")
@access.requires(Role.VIEWER)
def prompts_history(locale: str) -> str:
    """Every published version of a locale's catalog (who, when, comment), with Roll back."""
    versions = _versions_of(locale)
    live = versions.live_number(locale)
    return render_template(
        "console/prompts_history.html",
        locale=locale,
        history=versions.history(locale),
        live=live,
        can_edit=access.current_session().role.allows(Role.EDITOR),
        rolled_back=request.args.get("rolled_back"),
    )


@blueprint.post("/prompts/<locale>/rollback/<int:number>")
@access.requires(Role.EDITOR)
def rollback_prompts(locale: str, number: int) -> Any:
    """Publish a copy of an older version (texts and recordings as they were) as the newest."""
    versions = _versions()
    old = versions.version(locale, number)
    if old is None:
        abort(404, description=f"{locale}: no version {number} (it may have been pruned)")
    try:
        services().prompts.parse(old.text, locale, f"{locale}@{number}")
    except CatalogError as exc:
        abort(409, description=f"version {number} can no longer serve: {exc}")
    live = versions.live_number(locale)
    version = versions.rollback(locale, number, author=access.current_session().user)
    access.audit(
        "prompt.rollback",
        locale,
        before={"version": live},
        after={"version": version.number, "copy_of": number},
    )
    services().prompts.refresh(force=True)
    return redirect(url_for("console.prompts_history", locale=locale, rolled_back=version.number))


@blueprint.post("/prompts/<locale>/discard")
@access.requires(Role.EDITOR)
def discard_prompts(locale: str) -> Any:
    if _versions().discard_draft(locale):
        access.audit("prompt.draft.discard", locale)
    return _back(done=f"the {locale} draft was discarded")
