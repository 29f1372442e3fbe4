"""Voice prompt catalogs: consistency, locale choice, and the TwiML they render."""

from __future__ import annotations

import shutil
import wave
import xml.etree.ElementTree as ET

import pytest
from twilio.twiml.voice_response import VoiceResponse

from ivr.config import DEFAULT_PROMPTS_DIR
from ivr.prompts import DIGIT_PAUSE, READING_GAP, CatalogError, PromptCatalogs, UnknownLocale
from tests.conftest import PUBLIC_BASE_URL

AUDIO_BASE_URL = "https://ivr.example.test/prompts/audio"
GREETING = "otp.call.greeting"
SHIPPED_LOCALES = sorted(path.stem for path in DEFAULT_PROMPTS_DIR.glob("*.yaml"))


def rendered(response):
    root = ET.fromstring(str(response))
    assert root.tag == "Response"
    return root


def write_wav(path):
    """A tiny valid WAV file (a few ms of silence); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * 80)
    return path.read_bytes()


def drop_key(path, key):
    """Rewrite a catalog file without `key`: its line and any folded lines below it."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1
    path.write_text("".join(lines[:start] + lines[end:]), encoding="utf-8")


@pytest.fixture
def prompts_dir(tmp_path):
    """A copy of the shipped catalogs that a test may change."""
    folder = tmp_path / "voice_prompts"
    folder.mkdir()
    for catalog in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        shutil.copy(catalog, folder)
    return folder


@pytest.fixture
def recording(prompts_dir):
    """A recorded en-US greeting in the copied catalogs; returns its bytes."""
    return write_wav(prompts_dir / "audio" / "en-US" / f"{GREETING}.wav")


@pytest.fixture
def shipped():
    return PromptCatalogs(DEFAULT_PROMPTS_DIR, "en-US", AUDIO_BASE_URL)


# The shipped catalogs


def test_every_shipped_catalog_loads(shipped):
    assert shipped.locales == SHIPPED_LOCALES
    assert {"en-US", "es-ES", "fr-FR", "de-DE", "pt-BR"} <= set(shipped.locales)
    for catalog in shipped.catalogs.values():
        assert catalog.voice
        assert catalog.language
        assert catalog.prompts


def test_every_catalog_has_the_same_keys_as_en_us(shipped):
    assert shipped.missing_keys() == {}
    reference = set(shipped.catalogs["en-US"].prompts)
    for locale, catalog in shipped.catalogs.items():
        assert set(catalog.prompts) == reference, locale


def test_every_catalog_has_the_same_placeholders_per_key(shipped):
    assert shipped.placeholder_mismatches() == {}


def test_every_prompt_renders_with_the_values_the_app_supplies(shipped):
    for locale in shipped.locales:
        for key in shipped.catalogs[locale].prompts:
            text = shipped.text(
                locale, key, app_name="Acme", code="123456", ending="6 1", digit="1"
            )
            assert "{" not in text, (locale, key)


def test_missing_keys_reports_a_key_a_locale_lacks(prompts_dir):
    drop_key(prompts_dir / "es-ES.yaml", "otp.call.goodbye")
    catalogs = PromptCatalogs(prompts_dir, "en-US")
    assert catalogs.missing_keys() == {"es-ES": ["otp.call.goodbye"]}


def test_placeholder_mismatches_reports_a_changed_placeholder(prompts_dir):
    path = prompts_dir / "fr-FR.yaml"
    text = path.read_text(encoding="utf-8")
    assert "{app_name}" in text
    path.write_text(text.replace("{app_name}", "{nom}"), encoding="utf-8")
    mismatches = PromptCatalogs(prompts_dir, "en-US").placeholder_mismatches()
    assert list(mismatches) == ["fr-FR"]
    assert "otp.call.greeting" in mismatches["fr-FR"]


# Choosing a locale


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("en-US", "en-US"),
        ("es-ES", "es-ES"),
        ("pt-BR", "pt-BR"),
        ("es", "es-ES"),
        ("pt", "pt-BR"),
        ("en", "en-US"),
        ("es-MX", "es-ES"),
        ("fr-CA", "fr-FR"),
        ("en-GB", "en-US"),
        ("de_de", "de-DE"),
    ],
)
def test_resolve_locale_finds_the_catalog_for_a_request(shipped, requested, expected):
    assert shipped.resolve_locale(requested) == expected


@pytest.mark.parametrize("requested", ["xx-YY", "xx", "", "english", "en-USA", 42, ["en-US"]])
def test_resolve_locale_refuses_a_locale_nobody_speaks(shipped, requested):
    with pytest.raises(UnknownLocale):
        shipped.resolve_locale(requested)


def test_resolve_locale_ignores_the_case_of_the_language(shipped):
    assert shipped.resolve_locale("EN-US") == "en-US"
    assert shipped.resolve_locale("Es") == "es-ES"


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ("ES", "es-ES"),
        ("MX", "es-ES"),
        ("BR", "pt-BR"),
        ("PT", "pt-BR"),
        ("DE", "de-DE"),
        ("AT", "de-DE"),
        ("FR", "fr-FR"),
        ("US", "en-US"),
        ("GB", "en-US"),
        ("JP", "en-US"),
        ("IT", "en-US"),  # Italian is mapped, but no catalog speaks it
        (None, "en-US"),
    ],
)
def test_resolve_locale_picks_the_language_of_the_country(shipped, country, expected):
    assert shipped.resolve_locale(country=country) == expected


def test_an_explicit_locale_wins_over_the_country(shipped):
    assert shipped.resolve_locale("fr-FR", country="ES") == "fr-FR"


# Speaking prompts


def test_speak_uses_the_catalog_voice_and_language(shipped):
    response = VoiceResponse()
    shipped.speak(response, "es-ES", "otp.call.goodbye")
    (say,) = rendered(response)
    assert say.tag == "Say"
    assert say.attrib == {"voice": "Polly.Lucia-Neural", "language": "es-ES"}
    assert say.text == shipped.catalogs["es-ES"].prompts["otp.call.goodbye"]


def test_speak_fills_in_placeholders(shipped):
    response = VoiceResponse()
    shipped.speak(response, "en-US", GREETING, app_name="Acme")
    (say,) = rendered(response)
    assert say.text.startswith("Hello, this is Acme.")
    assert say.attrib == {"voice": "Polly.Joanna-Neural", "language": "en-US"}


def test_a_missing_key_falls_back_to_the_default_locale_text_and_voice(prompts_dir):
    drop_key(prompts_dir / "es-ES.yaml", "otp.call.goodbye")
    catalogs = PromptCatalogs(prompts_dir, "en-US")
    response = VoiceResponse()
    catalogs.speak(response, "es-ES", "otp.call.goodbye")
    catalogs.speak(response, "es-ES", "otp.call.no_input")
    fallback, own = rendered(response)
    assert fallback.text == "Thank you. Goodbye."
    assert fallback.attrib == {"voice": "Polly.Joanna-Neural", "language": "en-US"}
    assert own.attrib == {"voice": "Polly.Lucia-Neural", "language": "es-ES"}


def test_an_unknown_locale_is_spoken_in_the_default_locale(shipped):
    response = VoiceResponse()
    shipped.speak(response, "xx-YY", "otp.call.goodbye")
    (say,) = rendered(response)
    assert say.attrib["language"] == "en-US"


def test_a_key_in_no_catalog_raises_key_error(shipped):
    with pytest.raises(KeyError):
        shipped.speak(VoiceResponse(), "en-US", "no.such.prompt")


def test_a_recorded_prompt_is_played_instead_of_spoken(prompts_dir, recording):
    catalogs = PromptCatalogs(prompts_dir, "en-US", AUDIO_BASE_URL + "/")
    response = VoiceResponse()
    catalogs.speak(response, "en-US", GREETING, app_name="Acme")
    (play,) = rendered(response)
    assert play.tag == "Play"
    assert play.text == f"{AUDIO_BASE_URL}/en-US/{GREETING}.wav"
    assert not list(rendered(response).iter("Say"))


def test_another_locale_does_not_play_the_english_recording(prompts_dir, recording):
    catalogs = PromptCatalogs(prompts_dir, "en-US", AUDIO_BASE_URL)
    response = VoiceResponse()
    catalogs.speak(response, "es-ES", GREETING, app_name="Acme")
    (say,) = rendered(response)
    assert say.tag == "Say"
    assert say.attrib["language"] == "es-ES"


def test_a_fallback_prompt_plays_the_default_locale_recording(prompts_dir, recording):
    drop_key(prompts_dir / "es-ES.yaml", GREETING)
    catalogs = PromptCatalogs(prompts_dir, "en-US", AUDIO_BASE_URL)
    assert catalogs.missing_keys() == {"es-ES": [GREETING]}
    response = VoiceResponse()
    catalogs.speak(response, "es-ES", GREETING, app_name="Acme")
    (play,) = rendered(response)
    assert play.tag == "Play"
    assert play.text == f"{AUDIO_BASE_URL}/en-US/{GREETING}.wav"


def test_without_an_audio_base_url_a_recording_is_not_played(prompts_dir, recording):
    catalogs = PromptCatalogs(prompts_dir, "en-US")
    response = VoiceResponse()
    catalogs.speak(response, "en-US", GREETING, app_name="Acme")
    (say,) = rendered(response)
    assert say.tag == "Say"


def test_files_that_are_not_audio_are_not_recordings(prompts_dir):
    folder = prompts_dir / "audio" / "en-US"
    folder.mkdir(parents=True)
    (folder / f"{GREETING}.txt").write_text("not audio", encoding="utf-8")
    catalogs = PromptCatalogs(prompts_dir, "en-US", AUDIO_BASE_URL)
    assert catalogs.catalogs["en-US"].audio == {}


# Reading digits


def test_a_polly_voice_reads_each_digit_after_a_pause_and_loops_the_reading(shipped):
    response = VoiceResponse()
    shipped.speak_code(response, "en-US", "otp.call.code_intro", "012345", times=2)
    (say,) = rendered(response)
    assert say.attrib == {"voice": "Polly.Joanna-Neural", "language": "en-US", "loop": "2"}
    assert say.text == "Your code is"
    pauses = list(say)
    assert [child.tag for child in pauses] == ["break"] * 7
    assert [pause.get("time") for pause in pauses] == [DIGIT_PAUSE] * 6 + [READING_GAP]
    assert DIGIT_PAUSE == "350ms"
    assert [pause.tail for pause in pauses] == [*"012345", None]


def test_a_polly_voice_reads_digits_in_the_catalog_language(shipped):
    response = VoiceResponse()
    shipped.speak_code(response, "de-DE", "otp.call.code_intro", "987")
    (say,) = rendered(response)
    assert say.attrib == {"voice": "Polly.Vicki-Neural", "language": "de-DE", "loop": "1"}
    assert say.text == shipped.catalogs["de-DE"].prompts["otp.call.code_intro"]
    assert [pause.tail for pause in say.iter("break")] == ["9", "8", "7", None]


@pytest.fixture
def basic_voice_catalogs(prompts_dir):
    path = prompts_dir / "en-US.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("voice: Polly.Joanna-Neural", "voice: alice"), encoding="utf-8")
    catalogs = PromptCatalogs(prompts_dir, "en-US")
    assert catalogs.catalogs["en-US"].voice == "alice"
    assert not catalogs.catalogs["en-US"].speaks_ssml
    return catalogs


def test_a_basic_voice_gets_no_ssml(basic_voice_catalogs):
    response = VoiceResponse()
    basic_voice_catalogs.speak_code(response, "en-US", "otp.call.code_intro", "012345")
    (say,) = rendered(response)
    assert say.attrib == {"voice": "alice", "language": "en-US", "loop": "1"}
    assert list(say) == []


def test_a_basic_voice_reads_the_intro_and_comma_separated_digits(basic_voice_catalogs):
    response = VoiceResponse()
    basic_voice_catalogs.speak_code(response, "en-US", "otp.call.code_intro", "012345")
    (say,) = rendered(response)
    text = "".join(say.itertext())
    assert text.startswith("Your code is")
    assert "0, 1, 2, 3, 4, 5" in text
    assert [c for c in text if c.isdigit()] == list("012345")


# Broken catalogs


def test_a_catalog_whose_locale_does_not_match_its_file_name_is_refused(prompts_dir):
    path = prompts_dir / "fr-FR.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("locale: fr-FR", "locale: fr-CA"),
        encoding="utf-8",
    )
    with pytest.raises(CatalogError, match=r"fr-FR\.yaml") as caught:
        PromptCatalogs(prompts_dir, "en-US")
    assert "fr-CA" in str(caught.value)


def test_a_catalog_that_is_not_valid_yaml_is_refused(prompts_dir):
    broken = "locale: de-DE\nprompts: {flow.welcome: Hallo\n"
    (prompts_dir / "de-DE.yaml").write_text(broken, encoding="utf-8")
    with pytest.raises(CatalogError, match=r"de-DE\.yaml.*YAML") as caught:
        PromptCatalogs(prompts_dir, "en-US")
    # In plain words, at the line and column of the mistake (PyYAML's own words are not).
    assert "de-DE.yaml:2:10: not valid YAML: a '{' opened here is not closed" in str(caught.value)
    assert "while parsing" not in str(caught.value)


def test_a_catalog_without_prompts_is_refused(prompts_dir):
    (prompts_dir / "de-DE.yaml").write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"de-DE\.yaml"):
        PromptCatalogs(prompts_dir, "en-US")


def test_a_folder_without_the_default_locale_is_refused(prompts_dir):
    (prompts_dir / "en-US.yaml").unlink()
    with pytest.raises(CatalogError, match="en-US"):
        PromptCatalogs(prompts_dir, "en-US")


# Recorded prompts served by the app


@pytest.fixture
def prompts_client(make_app, prompts_dir, recording):
    return make_app(voice_prompts_dir=str(prompts_dir)).test_client()


def test_the_app_serves_a_recorded_prompt(prompts_client, recording):
    response = prompts_client.get(f"/prompts/audio/en-US/{GREETING}.wav")
    assert response.status_code == 200
    assert response.data == recording
    assert response.mimetype in ("audio/wav", "audio/x-wav", "audio/wave")


def test_the_app_plays_what_it_serves(make_app, prompts_dir, recording):
    app = make_app(voice_prompts_dir=str(prompts_dir))
    response = VoiceResponse()
    app.extensions["ivr"].prompts.speak(response, "en-US", GREETING, app_name="Acme")
    (play,) = rendered(response)
    assert play.text == f"{PUBLIC_BASE_URL}/prompts/audio/en-US/{GREETING}.wav"
    path = play.text.removeprefix(PUBLIC_BASE_URL)
    assert app.test_client().get(path).data == recording


@pytest.mark.parametrize(
    "path",
    [
        "/prompts/audio/en-US/../en-US.yaml",
        "/prompts/audio/en-US/..%2Fen-US.yaml",
        "/prompts/audio/en-US/%2E%2E%2F..%2Fen-US.yaml",
        "/prompts/audio/en-US/en-US.yaml",
        "/prompts/audio/en-US/otp.call.goodbye.wav",
        "/prompts/audio/en-US/notes.txt",
        "/prompts/audio/es-ES/otp.call.greeting.wav",
        "/prompts/audio/xx-YY/otp.call.greeting.wav",
        "/prompts/audio/../en-US.yaml",
        "/prompts/audio/audio/README.md",
    ],
)
def test_the_app_serves_nothing_but_listed_recordings(prompts_client, prompts_dir, path):
    (prompts_dir / "audio" / "en-US" / "notes.txt").write_text("private", encoding="utf-8")
    (prompts_dir / "audio" / "README.md").write_text("readme", encoding="utf-8")
    assert prompts_client.get(path).status_code == 404


def test_a_catalog_file_is_published_as_the_text_that_was_checked(prompts_dir, redis_client):
    from ivr.flows.versions import DocumentVersions

    published = DocumentVersions(redis_client, "prompts")
    catalogs = PromptCatalogs(prompts_dir, "en-US", published=published)
    path = prompts_dir / "en-US.yaml"
    checked = path.read_text(encoding="utf-8").replace("Goodbye.", "Bye for now.")
    parse = catalogs.parse

    def parse_while_an_editor_saves_a_broken_version(text, name, source):
        catalog = parse(text, name, source)
        if source == str(path):
            path.write_text("prompts: [not, a, mapping]\n", encoding="utf-8")
        return catalog

    catalogs.parse = parse_while_an_editor_saves_a_broken_version
    path.write_text(checked, encoding="utf-8")
    assert catalogs.refresh(force=True)
    assert published.live("en-US").text == checked
