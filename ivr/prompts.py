"""Everything a caller hears, from the `voice_prompts/<locale>.yaml` catalogs.

A catalog names its Twilio voice and language and maps prompt keys to text. A recorded file at
`voice_prompts/audio/<locale>/<key>.<mp3|wav>` is played instead of the text. A key missing in a
locale falls back to the default locale, spoken with that locale's voice, so a caller never hears
English words read by a Spanish voice.
"""

from __future__ import annotations

import copy
import logging
import re
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
import yaml
from twilio.twiml import TwiML

from ivr.flows import yaml_errors
from ivr.recordings import RECORDING_NAME

if TYPE_CHECKING:
    from ivr.flows.versions import DocumentVersions

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".mp3", ".wav")
RELOAD_INTERVAL_SECONDS = 1.0
# Pause between digits when reading a code: long enough to write each one down, short enough
# that six digits end well within eight seconds of the key press.
SSML_VOICES = ("Polly.", "Google.")  # read SSML breaks; Twilio's basic voices do not
DIGIT_PAUSE = "350ms"
READING_GAP = "1s"  # silence after each reading, before the next one starts
LOCALE_PATTERN = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{2}))?$")  # tags ignore case

# Language most callers in a country expect, for picking a locale from the number when the
# request names none. Countries not listed get the default locale.
_LANGUAGE_COUNTRIES = {
    "en": "US CA GB IE AU NZ ZA IN SG PH NG KE",
    "es": "ES MX AR CO CL PE VE EC GT CU BO DO HN PY SV NI CR PA UY PR",
    "fr": "FR BE LU MC SN CI",
    "de": "DE AT CH LI",
    "pt": "PT BR AO MZ",
    "it": "IT",
    "nl": "NL",
}
COUNTRY_LANGUAGES = {
    country: language
    for language, countries in _LANGUAGE_COUNTRIES.items()
    for country in countries.split()
}


def load_catalogs(
    directory: Path,
    default_locale: str,
    audio_base_url: str = "",
    published: DocumentVersions | None = None,
) -> PromptCatalogs:
    """The catalogs the app serves; a ConfigError (one line, naming the settings) if unusable.
    With `published`, the live versions in Redis (seeded from the files) serve."""
    from ivr.config import ConfigError

    try:
        return PromptCatalogs(directory, default_locale, audio_base_url, published=published)
    except CatalogError as exc:
        raise ConfigError([f"VOICE_PROMPTS_DIR / DEFAULT_LOCALE: {exc}"]) from None


class UnknownLocale(ValueError):
    """No catalog speaks the requested locale or its language."""


class CatalogError(ValueError):
    """A catalog file that cannot be used, with the file named."""


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _uploaded_recordings(section: object, prompts: dict[str, str], source: str) -> dict[str, str]:
    """A catalog's `recordings:` (prompt key -> name of a recording uploaded in the console,
    see ivr.recordings); they win over a file of the same key in the audio folder."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise CatalogError(f"{source}: recordings must map prompt keys to recording names")
    found = {}
    for key, name in section.items():
        if str(key) not in prompts:
            raise CatalogError(f"{source}: recordings: {key} is not a prompt of this catalog")
        if not isinstance(name, str) or not RECORDING_NAME.match(name):
            raise CatalogError(f"{source}: recordings: {key}: {name!r} is not a recording name")
        found[str(key)] = name
    return found


@dataclass
class LocaleCatalog:
    """One locale's voice, language and prompts."""

    locale: str
    voice: str
    language: str
    name: str
    prompts: dict[str, str]
    audio: dict[str, str] = field(default_factory=dict)  # prompt key -> file name
    # The YAML it was parsed from: a catalog file is published as the text that was checked,
    # never read again (an editor may be writing the next version meanwhile).
    text: str = field(default="", compare=False, repr=False)

    @property
    def speaks_ssml(self) -> bool:
        """Polly and Google voices read SSML breaks; Twilio's basic voices do not."""
        return self.voice.startswith(SSML_VOICES)


class PromptCatalogs:
    """All catalogs in a folder; renders prompts into TwiML.

    `refresh()` reloads them when a catalog or a recording folder changed (looked at most once
    per second), so a team's new prompt or recording is live without a restart. Catalogs that
    no longer load are refused, logged loudly, and the last good ones keep serving. `version`
    goes up on every reload, for whoever keeps renderings or lint results derived from them.

    With `published` (the app's case), the texts that serve are the live versions in Redis,
    published from the console; a catalog file whose text changed is imported as a new version
    (once, by whichever worker sees it first), and each worker polls the publish generation.
    """

    def __init__(
        self,
        directory: Path,
        default_locale: str,
        audio_base_url: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        published: DocumentVersions | None = None,
    ):
        self.directory = Path(directory)
        self.published = published
        self._generation: int | None = None
        self.default_locale = default_locale
        self.audio_base_url = audio_base_url.rstrip("/")
        self.version = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = self._files_signature()
        self._checked_at = clock()
        self.catalogs = self._load_checked()

    def _load_checked(self) -> dict[str, LocaleCatalog]:
        catalogs = {c.locale: c for c in self._load_all()}
        if self.published is not None:
            catalogs = self._published_over(catalogs)
        if self.default_locale not in catalogs:
            raise CatalogError(
                f"no catalog for the default locale {self.default_locale} in {self.directory}"
            )
        return catalogs

    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        """What changes when a catalog is edited or a recording added or removed."""
        marks = []
        paths = [*self.directory.glob("*.yaml"), *self.directory.glob("audio/*")]
        for path in sorted(paths):
            try:
                stat = path.stat()
            except OSError:
                continue
            marks.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(marks)

    def _published_over(self, files: dict[str, LocaleCatalog]) -> dict[str, LocaleCatalog]:
        """Import the catalog files (each text once), then the live versions from Redis; the
        files alone while Redis does not answer."""
        assert self.published is not None
        try:
            for locale, catalog in sorted(files.items()):
                self.published.import_file(locale, catalog.text, author=f"file:{locale}.yaml")
            generation = self.published.generation()
            live = self.published.live_versions()
        except (redis.RedisError, OSError) as exc:
            log.warning("prompts: Redis did not answer (%s); the files serve", exc)
            return files
        catalogs = dict(files)
        for locale, version in live.items():
            try:
                catalogs[locale] = self.parse(version.text, locale, f"{locale}@{version.number}")
            except CatalogError as exc:
                log.error("prompts: version %s of %s REFUSED: %s", version.number, locale, exc)
        self._generation = generation
        return catalogs

    def _published_moved(self) -> bool:
        if self.published is None:
            return False
        try:
            return self.published.generation() != self._generation
        except redis.RedisError:
            return False

    def refresh(self, *, force: bool = False) -> bool:
        """Reload if anything changed since the last look (at most one look per second);
        True when new catalogs are now serving."""
        now = self._clock()
        if not force and now - self._checked_at < RELOAD_INTERVAL_SECONDS:
            return False
        with self._lock:
            if not force and now - self._checked_at < RELOAD_INTERVAL_SECONDS:
                return False
            self._checked_at = now
            signature = self._files_signature()
            if signature == self._signature and not self._published_moved():
                return False
            self._signature = signature
            try:
                catalogs = self._load_checked()
            except CatalogError as exc:
                log.error("prompts: REFUSED, the last good catalogs keep serving: %s", exc)
                return False
            self.catalogs = catalogs
            self.version += 1
            log.info("prompts: reloaded from %s (%s)", self.directory, ", ".join(self.locales))
            return True

    def _load_all(self) -> list[LocaleCatalog]:
        catalogs = []
        for path in sorted(self.directory.glob("*.yaml")):
            catalogs.append(self._load(path))
        return catalogs

    def _load(self, path: Path) -> LocaleCatalog:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path}: not readable ({exc})") from None
        return self.parse(text, path.stem, str(path))

    def parse(self, text: str, name: str, source: str) -> LocaleCatalog:
        """A catalog's YAML text (a file, or a version published in Redis) for locale `name`;
        CatalogError naming `source` when it cannot serve."""
        try:
            data: Any = yaml_errors.load(text)
        except yaml.YAMLError as exc:
            mistake = yaml_errors.explain(exc)
            where = f":{mistake.line}" if mistake.line else ""
            where += f":{mistake.column}" if mistake.line and mistake.column else ""
            raise CatalogError(f"{source}{where}: not valid YAML: {mistake.message}") from None
        if not isinstance(data, dict) or not isinstance(data.get("prompts"), dict):
            raise CatalogError(f"{source}: expected keys locale, voice, language and prompts")
        locale = data.get("locale") or name
        if locale != name:
            raise CatalogError(f"{source}: locale {locale!r} does not match the file name")
        prompts = {str(k): str(v).strip() for k, v in data["prompts"].items() if v is not None}
        audio_dir = self.directory / "audio" / locale
        audio = {}
        if audio_dir.is_dir():
            for file in sorted(audio_dir.iterdir()):
                if file.suffix in AUDIO_SUFFIXES:
                    audio[file.stem] = file.name
        audio.update(_uploaded_recordings(data.get("recordings"), prompts, source))
        return LocaleCatalog(
            locale=locale,
            voice=str(data.get("voice") or "Polly.Joanna-Neural"),
            language=str(data.get("language") or locale),
            name=str(data.get("name") or locale),
            prompts=prompts,
            audio=audio,
            text=text,
        )

    def overlaid(self, texts: dict[str, str]) -> PromptCatalogs:
        """These catalogs with some locales' texts in place of theirs (the prompt drafts, for a
        simulator's trial): a copy that never reloads. CatalogError when a text cannot serve."""
        trial = copy.copy(self)
        trial.published = None
        trial._lock = threading.Lock()
        trial.catalogs = dict(self.catalogs)
        for locale, text in texts.items():
            trial.catalogs[locale] = self.parse(text, locale, f"{locale} draft")
        return trial

    @property
    def locales(self) -> list[str]:
        return sorted(self.catalogs)

    def resolve_locale(self, requested: object = None, country: str | None = None) -> str:
        """The catalog locale to use: the requested one (or its language), else the country's
        language, else the default. Raises UnknownLocale for a request nobody speaks."""
        if requested is not None:
            if not isinstance(requested, str):
                raise UnknownLocale("locale must be a string like 'en-US'")
            found = self._match(requested)
            if found is None:
                raise UnknownLocale(
                    f"no prompts for locale {requested!r}; available: {', '.join(self.locales)}"
                )
            return found
        language = COUNTRY_LANGUAGES.get(country or "")
        if language:
            return self._match(f"{language}-{country}") or self.default_locale
        return self.default_locale

    def _match(self, requested: str) -> str | None:
        match = LOCALE_PATTERN.match(requested.strip())
        if not match:
            return None
        language, region = match.group(1).lower(), (match.group(2) or "").upper()
        exact = f"{language}-{region}" if region else None
        if exact in self.catalogs:
            return exact
        same_language = sorted(loc for loc in self.catalogs if loc.split("-")[0] == language)
        if not same_language:
            return None
        default_language = self.default_locale.split("-")[0]
        return self.default_locale if language == default_language else same_language[0]

    def catalog(self, locale: str) -> LocaleCatalog:
        return self.catalogs.get(locale) or self.catalogs[self.default_locale]

    def text(self, locale: str, key: str, **values: object) -> str:
        """A prompt's text in `locale` (or the default locale), with values filled in."""
        _, text = self._lookup(locale, key)
        return text.format(**values)

    def _lookup(self, locale: str, key: str) -> tuple[LocaleCatalog, str]:
        catalog = self.catalog(locale)
        if key in catalog.prompts:
            return catalog, catalog.prompts[key]
        fallback = self.catalogs[self.default_locale]
        if key in fallback.prompts:
            return fallback, fallback.prompts[key]
        raise KeyError(f"prompt {key!r} is in no catalog")

    def speak(
        self,
        target: TwiML,
        locale: str,
        key: str,
        *,
        voice: str | None = None,
        recorded: bool = True,
        **values: object,
    ) -> None:
        """Append a prompt to a VoiceResponse or Gather: its recording, else TTS. A `voice`
        (a Verify Service's TtsName) or `recorded=False` (the text names another company than
        the recording would) always speaks the text."""
        catalog, text = self._lookup(locale, key)
        audio_file = catalog.audio.get(key)
        if audio_file and self.audio_base_url and recorded and voice is None:
            target.play(f"{self.audio_base_url}/{quote(catalog.locale)}/{quote(audio_file)}")
            return
        target.say(text.format(**values), voice=voice or catalog.voice, language=catalog.language)

    def speak_code(
        self,
        target: TwiML,
        locale: str,
        intro_key: str,
        digits: str,
        times: int = 1,
        voice: str | None = None,
    ) -> None:
        """Say the prompt `intro_key`, then `digits` one by one with clear pauses; `times` over.

        One <Say loop=…>: single digits need no <say-as>, and the loop repeats the reading
        without a second copy of it, so the TwiML stays small.
        """
        catalog, intro = self._lookup(locale, intro_key)
        voice = voice or catalog.voice
        if not voice.startswith(SSML_VOICES):
            text = f"{intro} " + ", ".join(digits) + "."  # commas: the only pause basic voices know
            target.say(text, voice=voice, language=catalog.language, loop=times)
            return
        say = target.say(intro, voice=voice, language=catalog.language, loop=times)
        for digit in digits:
            say.break_(time=DIGIT_PAUSE)
            say.append(digit)
        say.break_(time=READING_GAP)

    def missing_keys(self) -> dict[str, list[str]]:
        """Per locale, the keys the default locale has and it lacks."""
        reference = set(self.catalogs[self.default_locale].prompts)
        return {
            locale: sorted(reference - set(catalog.prompts))
            for locale, catalog in self.catalogs.items()
            if reference - set(catalog.prompts)
        }

    def missing_recordings(self) -> dict[str, list[str]]:
        """Per locale, prompt keys recorded in another locale but not in this one (they are
        spoken by TTS here: worth knowing when a team records its prompts)."""
        recorded = {key for catalog in self.catalogs.values() for key in catalog.audio}
        return {
            locale: missing
            for locale, catalog in self.catalogs.items()
            if (missing := sorted(k for k in recorded - set(catalog.audio) if k in catalog.prompts))
        }

    def stray_recordings(self) -> dict[str, list[str]]:
        """Per locale, audio files named after no prompt key (a typo: never played)."""
        return {
            locale: sorted(catalog.audio[key] for key in stray)
            for locale, catalog in self.catalogs.items()
            if (stray := set(catalog.audio) - set(self._all_keys()))
        }

    def _all_keys(self) -> set[str]:
        return {key for catalog in self.catalogs.values() for key in catalog.prompts}

    def placeholder_mismatches(self) -> dict[str, list[str]]:
        """Per locale, keys whose {placeholders} differ from the default locale's text."""
        reference = self.catalogs[self.default_locale].prompts
        found: dict[str, list[str]] = {}
        for locale, catalog in self.catalogs.items():
            for key, text in catalog.prompts.items():
                if key in reference and _placeholders(text) != _placeholders(reference[key]):
                    found.setdefault(locale, []).append(key)
        return found
