"""Recorded prompts uploaded in the console: checked by their bytes, kept in Redis, drafted and
published with the catalog, played by every host."""

from __future__ import annotations

import io
import secrets
import wave

import pytest

from ivr.recordings import (
    MAX_RECORDING_BYTES,
    MAX_RECORDING_SECONDS,
    BadRecording,
    Recordings,
    inspect_audio,
)
from tests.conftest import PUBLIC_BASE_URL, twilio_post, twiml
from tests.console_helpers import make_user, post, sign_in

# An MPEG-1 Layer III frame (128 kbit/s, 44.1 kHz) of silence: header, then zeroed side info.
MP3_FRAME = bytes.fromhex("FFFB9064") + bytes(413)


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as recording:
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(rate)
        recording.writeframes(bytes(int(seconds * rate) * 2))
    return out.getvalue()


def mp3_bytes(frames: int = 100) -> bytes:
    return MP3_FRAME * frames


# What an upload is, from its bytes


def test_a_wav_is_known_by_its_content_and_named_by_its_digest():
    recording = inspect_audio(wav_bytes(1.5))
    assert recording.mime_type == "audio/wav"
    assert recording.seconds == 1.5
    assert recording.name.endswith(".wav") and len(recording.name) == 64 + 4


def test_an_mp3_without_tags_is_known_by_its_frames():
    recording = inspect_audio(mp3_bytes())
    assert recording.mime_type == "audio/mpeg"
    assert recording.seconds == pytest.approx(2.6, abs=0.1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"Name,Phone\nAda,+14155550123\n", "only WAV and MP3"),
        (b"%PDF-1.7\n" + bytes(100), "looks like application/pdf"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "looks like image/png"),
        (b"ID3" + bytes(200), "cannot be read"),  # a tag header with no audio behind it
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20), "cannot be read"),
        (wav_bytes(0), "no audio"),
    ],
)
def test_what_is_not_a_playable_recording_is_refused_with_the_reason(data, reason):
    with pytest.raises(BadRecording, match=reason):
        inspect_audio(data)


def test_a_file_over_5_mb_or_a_recording_too_long_for_a_prompt_is_refused():
    with pytest.raises(BadRecording, match="larger than 5 MB"):
        inspect_audio(wav_bytes() + bytes(MAX_RECORDING_BYTES))
    with pytest.raises(BadRecording, match="a prompt may last"):
        inspect_audio(wav_bytes(MAX_RECORDING_SECONDS + 1, rate=4000))


def test_recordings_are_kept_once_and_read_back_from_redis(redis_client):
    recordings = Recordings(redis_client)
    data = wav_bytes()
    first = recordings.store(data, uploaded_by="eddie")
    again = recordings.store(data, uploaded_by="someone-else")
    assert first == again
    assert Recordings(redis_client).audio(first.name) == (data, "audio/wav")  # a second host
    assert recordings.exists(first.name) and recordings.seconds(first.name) == 1.0
    assert redis_client.hget(f"ivr:{{recording:{first.name[:64]}}}:audio", "uploaded_by") == (
        "eddie"
    )
    assert recordings.audio("0" * 64 + ".wav") is None
    assert recordings.audio("../../etc/passwd") is None
    assert not recordings.exists("not-a-name.wav")


# In the console, and then in calls


@pytest.fixture
def editor(app):
    make_user(app, "eddie", "editor")
    make_user(app, "vera", "viewer")
    return sign_in(app, "eddie")


def upload(client, data: bytes, filename: str, locale: str = "en-US", key: str = "flow.welcome"):
    return post(
        client,
        f"/console/prompts/{locale}/{key}/recording",
        {"recording": (io.BytesIO(data), filename)},
        content_type="multipart/form-data",
    )


def draft_of(app, locale: str = "en-US"):
    return app.extensions["ivr"].prompts.published.draft(locale)


def test_an_upload_goes_to_the_draft_and_callers_hear_it_only_once_published(app, editor):
    data = wav_bytes()
    response = upload(editor, data, "welcome.wav")
    assert response.status_code == 302
    assert "saved to the draft" in editor.get(response.location).text
    name = inspect_audio(data).name
    assert f"flow.welcome: {name}" in draft_of(app).text
    # Drafted: the page plays it, callers do not hear it yet.
    assert editor.get(f"/console/recordings/{name}").data == data
    first = twiml(twilio_post(app.test_client(), "/voice/incoming", incoming_call()))
    assert not [play for play in first.iter("Play") if name in (play.text or "")]
    assert app.test_client().get(f"/prompts/audio/en-US/{name}").status_code == 404

    post(editor, "/console/prompts/en-US/publish", {"comment": "recorded welcome"})
    first = twiml(twilio_post(app.test_client(), "/voice/incoming", incoming_call()))
    plays = [play.text for play in first.iter("Play")]
    assert f"{PUBLIC_BASE_URL}/prompts/audio/en-US/{name}" in plays
    served = app.test_client().get(f"/prompts/audio/en-US/{name}")
    assert served.data == data and served.mimetype == "audio/wav"
    assert "immutable" in served.headers["Cache-Control"]
    publish, uploaded = app.extensions["ivr"].audit.entries(limit=2)
    assert (uploaded.action, uploaded.target, uploaded.actor) == (
        "prompt.recording",
        "en-US:flow.welcome",
        "eddie",
    )
    assert uploaded.after["file"] == "welcome.wav" and publish.action == "prompt.publish"


def test_another_host_plays_a_published_upload(app, make_app, editor):
    data = mp3_bytes()
    upload(editor, data, "welcome.mp3")
    post(editor, "/console/prompts/en-US/publish", {"comment": ""})
    name = inspect_audio(data).name
    other_host = make_app()  # same Redis, its own process state
    served = other_host.test_client().get(f"/prompts/audio/en-US/{name}")
    assert served.status_code == 200 and served.data == data
    assert served.mimetype == "audio/mpeg"


def test_a_renamed_file_is_refused_with_its_reason_and_nothing_is_drafted(app, editor):
    response = upload(editor, b"Name,Phone\nAda,+14155550123\n", "welcome.mp3")
    page = editor.get(response.location).text
    assert "welcome.mp3: only WAV and MP3 recordings can be played" in page
    assert 'id="recording-file"' in page  # the form stays open to try again
    assert draft_of(app) is None


def test_an_upload_without_a_file_or_over_the_limit_is_refused(app, editor):
    response = post(editor, "/console/prompts/en-US/flow.welcome/recording", {})
    assert "choose a WAV or MP3 file" in editor.get(response.location).text
    too_big = upload(editor, bytes(MAX_RECORDING_BYTES + 128 * 1024), "huge.wav")
    assert too_big.status_code == 413
    assert draft_of(app) is None


def test_uploads_need_an_editor_and_a_known_prompt(app, editor):
    viewer = sign_in(app, "vera")
    assert upload(viewer, wav_bytes(), "welcome.wav").status_code == 403
    assert upload(editor, wav_bytes(), "welcome.wav", key="no.such.prompt").status_code == 404
    assert upload(editor, wav_bytes(), "welcome.wav", locale="xx-YY").status_code == 404
    assert draft_of(app) is None


def test_a_removed_recording_is_spoken_as_text_again_once_published(app, editor):
    data = wav_bytes()
    upload(editor, data, "welcome.wav")
    post(editor, "/console/prompts/en-US/publish", {"comment": ""})
    response = post(editor, "/console/prompts/en-US/flow.welcome/recording/remove")
    assert "removed from the draft" in editor.get(response.location).text
    assert "recordings" not in draft_of(app).text
    post(editor, "/console/prompts/en-US/publish", {"comment": ""})
    first = twiml(twilio_post(app.test_client(), "/voice/incoming", incoming_call()))
    assert "Thank you for calling Acme" in " ".join(first.itertext())
    again = post(editor, "/console/prompts/en-US/flow.welcome/recording/remove")
    assert "has no uploaded recording" in editor.get(again.location).text


def incoming_call() -> dict[str, str]:
    return {
        "CallSid": "CA" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": "+14155550100",
        "To": "+14155550199",
        "CallStatus": "ringing",
    }
