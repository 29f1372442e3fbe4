"""The app's flow library: the live versions published in Redis, seeded from FLOWS_DIR.

What a caller hears is always a published version: from the console, `ivr flows import`, or a
file in FLOWS_DIR whose text changed (imported once, by whichever worker sees it first). Each
worker polls the publish generation at most once a second and re-reads only then, so a publish
reaches every worker on every host within about a second. A call keeps the version it started
with: `served(name, revision)` finds older versions (cached, they never change) and drafts
frozen for the simulator ("trial:<digest>").
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import redis

from ivr.flows.lint import lint
from ivr.flows.loader import (
    FlowFileError,
    FlowLibrary,
    FlowLookups,
    Linter,
    LoadedFlow,
    cross_flow_problems,
    flow_for_number,
    load_flow_text,
)
from ivr.flows.model import Flow
from ivr.flows.problems import Problem
from ivr.flows.versions import DocumentVersions
from ivr.prompts import PromptCatalogs

log = logging.getLogger(__name__)

__all__ = ["PublishedFlows", "cross_flow_problems", "linter_for", "open_library"]

RELOAD_INTERVAL_SECONDS = 1.0
TRIAL_PREFIX = "trial:"
_PINNED_CACHE_SIZE = 64  # older versions kept parsed for calls still running on them


def linter_for(prompts: PromptCatalogs | None, *, require_audio: bool = False) -> Linter:
    """The loader's linter: schema-valid flows checked against each other and the prompts
    (and, with `require_audio`, against the recordings)."""

    def run(flow: Flow, file: str, lines: dict[str, int], names: set[str]) -> list[Problem]:
        return lint(
            flow, prompts, flow_names=names, file=file, lines=lines, require_audio=require_audio
        )

    return run


def open_library(
    directory: Path, prompts: PromptCatalogs | None, client: redis.Redis | None = None
) -> FlowLibrary | PublishedFlows:
    """The flows the app serves: published in Redis (seeded from `directory`) when a client
    is given, else the files of `directory` alone."""
    files = FlowLibrary(directory, linter_for(prompts), prompts=prompts)
    if client is None:
        return files
    return PublishedFlows(DocumentVersions(client, "flows"), files, linter_for(prompts))


class PublishedFlows(FlowLookups):
    """Live flow versions from Redis, by name and by called number, with the same reading API
    as FlowLibrary (get, for_number, flows, refused) plus versions (served)."""

    def __init__(
        self,
        versions: DocumentVersions,
        files: FlowLibrary | None,
        linter: Linter | None,
        *,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.versions = versions
        self.files = files
        self.linter = linter
        self.prompts = files.prompts if files else None
        self.reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._generation: int | None = None  # None: Redis never answered; serve the files
        self._prompts_version = self.prompts.version if self.prompts else 0
        self._imported: dict[str, LoadedFlow] = {}
        self._on_disk: set[str] | None = None  # flow names in FLOWS_DIR when last looked
        self._live: dict[str, LoadedFlow] = {}
        self._refused_live: dict[str, list[Problem]] = {}
        self._pinned: OrderedDict[tuple[str, str], LoadedFlow] = OrderedDict()
        self.refresh(force=True)

    # -- reading -----------------------------------------------------------------------------

    @property
    def flows(self) -> dict[str, LoadedFlow]:
        """The live version of every flow (the files' flows until Redis first answers)."""
        self.refresh()
        return dict(self._serving())

    @property
    def refused(self) -> dict[Path | str, list[Problem]]:
        """Files refused by the loader, and published versions that no longer lint (a prompt
        they use was removed): the last good version of those keeps serving."""
        found: dict[Path | str, list[Problem]] = dict(self.files.refused) if self.files else {}
        found.update(self._refused_live)
        return found

    def served_for_number(self, called: str) -> LoadedFlow | None:
        self.refresh()
        return flow_for_number(self._serving(), called)

    def served(self, name: str, revision: str = "") -> LoadedFlow | None:
        """Flow `name` at `revision`: "" the live version; "7" version 7 (the live one if it was
        pruned); "trial:<digest>" a draft frozen for the simulator (None once expired)."""
        self.refresh()
        live = self._serving().get(name)
        if not revision or (live is not None and live.revision == revision):
            return live
        key = (name, revision)
        with self._lock:
            pinned = self._pinned.get(key)
            if pinned is not None:
                self._pinned.move_to_end(key)
                return pinned
        pinned = self._load_revision(name, revision)
        if pinned is None:
            return None if revision.startswith(TRIAL_PREFIX) else live
        with self._lock:
            self._pinned[key] = pinned
            while len(self._pinned) > _PINNED_CACHE_SIZE:
                self._pinned.popitem(last=False)
        return pinned

    def _serving(self) -> dict[str, LoadedFlow]:
        if self._generation is None and self.files is not None:
            return self.files.flows  # Redis has not answered yet: the files, as they are
        return self._live

    def _load_revision(self, name: str, revision: str) -> LoadedFlow | None:
        try:
            if revision.startswith(TRIAL_PREFIX):
                text = self.versions.trial(revision.removeprefix(TRIAL_PREFIX))
            elif revision.isdigit():
                version = self.versions.version(name, int(revision))
                text = version.text if version else None
            else:
                return None
        except redis.RedisError as exc:
            log.warning("flow %s: version %s not readable (%s)", name, revision, exc)
            return None
        if text is None:
            return None
        try:
            # Not linted again: it was checked when published (or tried); a call on it goes on.
            return load_flow_text(text, name, f"{name}@{revision}", None, set(), revision=revision)
        except FlowFileError as exc:
            log.error("flow %s: version %s no longer loads: %s", name, revision, exc)
            return None

    # -- checking a draft ------------------------------------------------------------------------

    def check(self, name: str, text: str) -> tuple[LoadedFlow | None, list[Problem]]:
        """The checks of `ivr flows check`, run on `text` as the next version of `name`: the
        schema, lint against the prompts and the other flows, and what spans flows (a number
        claimed twice, two defaults). The loaded flow (None on any error) and every problem."""
        others = {n: f for n, f in self._serving().items() if n != name}
        names = {*others, name}
        try:
            loaded = load_flow_text(text, name, f"{name}.yaml", self.linter, names)
        except FlowFileError as exc:
            return None, exc.problems
        problems = list(loaded.warnings)
        mentions = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        across = [
            problem
            for problem in cross_flow_problems({**others, name: loaded})
            if mentions.search(problem.message)
        ]
        problems += across
        if any(problem.severity == "error" for problem in across):
            return None, problems
        return loaded, problems

    # -- reloading -----------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Import changed files, then reload if anything was published; at most once per
        reload interval (unless forced). Redis away: keep serving what we have."""
        now = self._clock()
        if not force and now - self._checked_at < self.reload_interval:
            return
        with self._lock:
            if not force and now - self._checked_at < self.reload_interval:
                return
            self._checked_at = now
            try:
                if self.files is not None:
                    self.files.refresh(force=force)
                    self._import_changed_files()
                generation = self.versions.generation()
                prompts_version = self.prompts.version if self.prompts else 0
                if generation != self._generation or prompts_version != self._prompts_version:
                    self._reload_live()
                    self._generation = generation
                    self._prompts_version = prompts_version
            except redis.RedisError as exc:
                log.warning("flows: Redis did not answer (%s); serving what was loaded", exc)

    def _import_changed_files(self) -> None:
        """Publish each file the loader (re)loaded since we last looked; the script skips text
        already imported, so every worker may try."""
        assert self.files is not None
        on_disk = set(self.files.flows) | {Path(path).stem for path in self.files.refused}
        if on_disk != self._on_disk:
            # A flow deployed as a file goes when its file goes (one made in the console stays).
            for name in set(self.versions.live_numbers()) - on_disk:
                if self.versions.retire(name, only_from="file"):
                    log.warning("flow %s: its file is gone; no longer served", name)
            self._on_disk = on_disk
        for name, loaded in self.files.flows.items():
            if self._imported.get(name) is loaded or loaded.path is None:
                continue
            # The text that was linted, never the file read again (it may have changed since).
            version = self.versions.import_file(
                name, loaded.text, author=f"file:{loaded.path.name}"
            )
            if version is not None:
                log.info("flow %s: version %d imported from %s", name, version.number, loaded.path)
            self._imported[name] = loaded

    def _reload_live(self) -> None:
        live = self.versions.live_versions()
        names = set(live)
        flows: dict[str, LoadedFlow] = {}
        refused: dict[str, list[Problem]] = {}
        for name, version in live.items():
            revision = str(version.number)
            current = self._live.get(name)
            if current is not None and self._still_good(current, revision):
                flows[name] = current
                continue
            try:
                flows[name] = load_flow_text(
                    version.text, name, f"{name}@{revision}", self.linter, names, revision=revision
                )
            except FlowFileError as exc:
                refused[f"{name}@{revision}"] = exc.problems
                fallback = self._last_good(name, version.number, names, current)
                serving = f"version {fallback.revision}" if fallback else "nothing"
                log.error(
                    "flow %s: version %s REFUSED, %s serves:\n  %s", name, revision, serving, exc
                )
                if fallback is not None:
                    flows[name] = fallback
        changed = flows != self._live
        self._live = flows
        self._refused_live = refused
        if changed:
            for problem in cross_flow_problems(flows):
                log.log(
                    logging.ERROR if problem.severity == "error" else logging.WARNING,
                    "flows: %s",
                    problem.message,
                )

    def _last_good(
        self, name: str, refused: int, names: set[str], current: LoadedFlow | None
    ) -> LoadedFlow | None:
        """The newest published version older than `refused` that still loads: the same one on
        every worker, whichever versions each happened to see (one that skipped a version must
        not fall back to its own older one). `current` when none does."""
        for older in self.versions.history(name):
            if older.number >= refused:
                continue
            revision = str(older.number)
            if current is not None and self._still_good(current, revision):
                return current
            try:
                return load_flow_text(
                    older.text, name, f"{name}@{revision}", self.linter, names, revision=revision
                )
            except FlowFileError:
                continue
        return current

    def _still_good(self, loaded: LoadedFlow, revision: str) -> bool:
        """Whether `loaded` is `revision`, linted against the prompts still serving: no need to
        load it again."""
        return loaded.revision == revision and not self._prompts_moved()

    def _prompts_moved(self) -> bool:
        return bool(self.prompts) and self.prompts.version != self._prompts_version
