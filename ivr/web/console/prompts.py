"""Prompts: every prompt key in every locale, with its variables, missing translations marked,
recordings played in the page, and a "listen" button (the browser's speech synthesis)."""

from __future__ import annotations

import string

from flask import render_template, url_for

from ivr.app import services
from ivr.users import Role
from ivr.web.console import access, blueprint


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
    return render_template(
        "console/prompts.html", rows=rows, locales=locales, default_locale=catalogs.default_locale
    )
