"""`make bench`'s caller report walks the default flow's main paths through the real webhooks
and reads how long the caller listens from the TwiML (espeak-ng when installed, else an
estimate by length). Seconds are reported, never asserted: the paths and answers are."""

from __future__ import annotations

from bench import caller_time


def test_the_caller_report_walks_every_main_path_and_locale():
    found = caller_time.measure()
    paths = {row["path"]: row for row in found["paths"]}
    assert [row["ends"] for row in found["paths"]] == ["enqueue", "enqueue", "enqueue", "hangup"]
    assert paths["known caller (caller ID on file)"]["answers"] == 2, "no language asked"
    assert paths["unknown caller, account number"]["answers"] == 4
    assert paths["known caller, one wrong code"]["answers"] == 3
    assert all(row["seconds"] > 0 for row in found["paths"])
    locales = [row["locale"] for row in found["time_to_code"]]
    assert locales == ["de-DE", "en-US", "es-ES", "fr-FR", "pt-BR"]
    for row in found["time_to_code"]:
        assert sum(character.isdigit() for character in row["text"]) == 6, row
        assert row["seconds"] > 0
    assert caller_time.render(found)[0].startswith("caller time")
