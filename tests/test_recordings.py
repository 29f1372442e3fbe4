"""Recorded prompts uploaded in the console: checked by their bytes, kept in Redis, drafted and
published with the catalog, played by every host; swept once nothing names them, and capped."""

from __future__ import annotations

import io
import json
import secrets
import time
import wave
from html import unescape

import pytest

from ivr import keys
from ivr.flows.versions import DocumentVersions
from ivr.recordings import (
    GRACE_SECONDS,
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


# Nothing grows without bound: the sweep of recordings nothing names, and the total's cap


class Clock:
    """Wall-clock seconds that move only when a test says."""

    def __init__(self, at: float = 1_700_000_000.0):
        self.at = at

    def __call__(self) -> float:
        return self.at


def digest_of(data: bytes) -> str:
    return inspect_audio(data).name[:64]


def counted(client) -> tuple[set[str], int]:
    """The digests the index counts, and their total (which must be the sum of their sizes)."""
    sizes = client.hgetall(keys.recordings_sizes())
    assert set(client.zrange(keys.recordings_index(), 0, -1)) == set(sizes)
    total = int(client.get(keys.recordings_total()) or 0)
    assert total == sum(int(size) for size in sizes.values())
    return set(sizes), total


def test_an_old_recording_nothing_names_is_deleted_and_uncounted(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    data = wav_bytes()
    recording = recordings.store(data, uploaded_by="eddie")
    assert counted(redis_client) == ({digest_of(data)}, len(data))
    clock.at += GRACE_SECONDS + 1
    assert recordings.sweep(lambda: ["a text naming no recording"]) == [digest_of(data)]
    assert Recordings(redis_client).audio(recording.name) is None
    assert not redis_client.exists(keys.prompt_recording(digest_of(data)))
    assert counted(redis_client) == (set(), 0)


def test_a_fresh_upload_no_draft_names_yet_is_kept(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    data = wav_bytes()
    recordings.store(data, uploaded_by="eddie")  # its draft is written after this
    clock.at += GRACE_SECONDS - 1
    assert recordings.sweep(list) == []
    assert recordings.exists(inspect_audio(data).name)


def test_uploading_the_same_bytes_again_starts_the_grace_over(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    data = wav_bytes()
    recordings.store(data, uploaded_by="eddie")
    clock.at += GRACE_SECONDS
    recordings.store(data, uploaded_by="vera")  # counted once, its time moved on
    clock.at += GRACE_SECONDS - 1
    assert recordings.sweep(list) == []
    assert counted(redis_client) == ({digest_of(data)}, len(data))


def test_an_upload_landing_while_the_sweep_reads_the_texts_is_not_deleted(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    data = wav_bytes()
    recordings.store(data, uploaded_by="eddie")
    clock.at += GRACE_SECONDS + 1
    another_host = Recordings(redis_client, clock=clock)

    def texts_while_someone_uploads_it_again() -> list[str]:
        another_host.store(data, uploaded_by="vera")  # chosen already, not named yet
        return []

    assert recordings.sweep(texts_while_someone_uploads_it_again) == []
    assert another_host.audio(inspect_audio(data).name) == (data, "audio/wav")
    assert counted(redis_client) == ({digest_of(data)}, len(data))


def test_a_count_left_without_its_recording_is_dropped_by_the_sweep(redis_client):
    """What a crash between counting an upload and storing it leaves: a count, no audio."""
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    lost = "ab" * 32
    redis_client.zadd(keys.recordings_index(), {lost: int(clock.at * 1000)})
    redis_client.hset(keys.recordings_sizes(), lost, 4096)
    redis_client.set(keys.recordings_total(), 4096)
    clock.at += GRACE_SECONDS + 1
    assert recordings.sweep(list) == [lost]
    assert counted(redis_client) == (set(), 0)


def test_what_a_draft_the_live_version_or_history_names_is_kept_the_rest_swept(
    app, redis_client, editor
):
    first, second, third, replaced = (wav_bytes(seconds) for seconds in (1, 2, 3, 4))
    upload(editor, first, "first.wav")
    post(editor, "/console/prompts/en-US/publish", {"comment": "first"})  # then in history
    upload(editor, second, "second.wav")
    post(editor, "/console/prompts/en-US/publish", {"comment": "second"})  # live
    upload(editor, replaced, "oops.wav")
    upload(editor, third, "third.wav", key="flow.main_menu.long")
    upload(editor, first, "first.wav")  # the draft names first again, no longer `replaced`
    assert f"flow.welcome: {inspect_audio(first).name}" in draft_of(app).text
    published = app.extensions["ivr"].prompts.published
    two_hours_on = Recordings(redis_client, clock=lambda: time.time() + 2 * 3600)
    assert two_hours_on.sweep(published.kept_records) == [digest_of(replaced)]
    for data in (first, second, third):
        assert two_hours_on.exists(inspect_audio(data).name)
    assert counted(redis_client)[0] == {digest_of(data) for data in (first, second, third)}
    post(editor, "/console/prompts/en-US/discard")  # third was named by the draft alone
    assert two_hours_on.sweep(published.kept_records) == [digest_of(third)]


def test_a_recording_goes_once_the_history_naming_it_is_pruned(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    versions = DocumentVersions(redis_client, "prompts", history_cap=2)
    names = [recordings.store(wav_bytes(n), uploaded_by="eddie").name for n in (1, 2, 3)]
    for name in names:
        versions.publish("en-US", f"recordings:\n  flow.welcome: {name}\n", author="eddie")
    clock.at += GRACE_SECONDS + 1
    assert recordings.sweep(versions.kept_records) == [names[0][:64]]  # version 1 was pruned
    assert recordings.sweep(versions.kept_records) == []


def test_a_recording_only_a_simulator_trial_names_is_kept_while_the_trial_lasts(redis_client):
    clock = Clock()
    recordings = Recordings(redis_client, clock=clock)
    versions = DocumentVersions(redis_client, "prompts")
    name = recordings.store(wav_bytes(), uploaded_by="eddie").name
    trial = versions.save_trial(json.dumps({"en-US": f"recordings:\n  flow.welcome: {name}\n"}))
    clock.at += GRACE_SECONDS + 1
    assert recordings.sweep(versions.kept_records) == []
    redis_client.delete(keys.document_trial("prompts", trial))  # as when it expires
    assert recordings.sweep(versions.kept_records) == [name[:64]]


def test_one_host_sweeps_at_a_time_from_the_housekeeping_chores(app, redis_client):
    old = Recordings(redis_client, clock=lambda: time.time() - 2 * 3600)
    data = wav_bytes()
    old.store(data, uploaded_by="eddie")
    for chore in app.extensions["ivr"].housekeeping:  # what each worker's thread runs
        chore()
    assert not old.exists(inspect_audio(data).name)
    assert redis_client.pttl(keys.recordings_sweep()) > 0
    another_host = Recordings(redis_client)
    assert another_host.sweep_if_due(list) is None  # swept a moment ago, elsewhere


def test_recordings_stored_before_they_were_counted_are_counted_once(redis_client):
    data = wav_bytes()
    digest = digest_of(data)
    redis_client.hset(  # as an older release stored it: no count, no index
        keys.prompt_recording(digest),
        mapping={"audio": "...", "type": "audio/wav", "seconds": "1.0", "bytes": len(data)}
        | {"uploaded_by": "eddie", "uploaded_at": 1_600_000_000_000},
    )
    recordings = Recordings(redis_client)
    assert recordings.count_stored() == 1
    assert recordings.count_stored() == 0
    assert counted(redis_client) == ({digest}, len(data))
    assert recordings.sweep(list) == [digest]  # uploaded long ago, named by nothing


def test_an_upload_over_the_total_is_refused_with_what_to_do_and_nothing_is_written(
    make_app, redis_client
):
    app = make_app(recordings_max_mb=5)
    make_user(app, "eddie", "editor")
    editor = sign_in(app, "eddie")
    kept, more = wav_bytes(200), wav_bytes(150)  # 3.1 MB, then 2.3 MB: over 5 MB together
    upload(editor, kept, "welcome.wav")
    before = draft_of(app).text
    response = upload(editor, more, "menu.wav", key="flow.main_menu.long")
    page = editor.get(response.location).text
    assert "menu.wav: there is no room for it" in unescape(page)
    assert "the limit of 5.0 MB (RECORDINGS_MAX_MB)" in unescape(page)
    assert "take unused ones out of the drafts" in unescape(page)
    assert 'id="recording-file"' in page  # the form stays open
    assert draft_of(app).text == before
    assert not redis_client.exists(keys.prompt_recording(digest_of(more)))
    assert counted(redis_client) == ({digest_of(kept)}, len(kept))
    again = upload(editor, kept, "welcome.wav")  # the same bytes take no more room
    assert "saved to the draft" in editor.get(again.location).text
