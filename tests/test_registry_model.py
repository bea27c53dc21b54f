"""The registry against a model: random sequences of operations give the answers a few dicts give.

A hypothesis ``RuleBasedStateMachine`` logs small random files (contents drawn from a small pool, so
blobs are shared between files, versions and artifacts, and identical re-logs happen), sets and deletes
aliases, resolves by ``vN``, alias and ``latest``, lists artifacts and downloads versions through the SDK
(and so through the shared cache), comparing every answer and every byte with :class:`RegistryModel`.
It runs against the embedded registry and against the session's real server (``registry`` fixture); each
example uses a fresh project so that examples never see each other.

Versions are deleted too (``delete_version``): the model keeps versions by number, so a deletion is
``versions.pop(n)`` with ``next_version`` untouched (numbers are never given out again), ``latest`` falls to
the highest left, custom aliases protect a version unless deleted with it, and an artifact whose every
version is deleted leaves the listings.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import WITH_POSTGRES, select_backend
from tests.support.data import log_files
from tests.support.hypothesis_settings import state_machine_settings
from wanllmdb.errors import (
    AliasError,
    AliasProtectedError,
    ArtifactNotFoundError,
    ProjectNotFoundError,
    VersionNotFoundError,
)


@pytest.fixture(params=WITH_POSTGRES)
def backend(request, monkeypatch) -> str:
    """Also against a server whose metadata is in PostgreSQL."""
    return select_backend(request, monkeypatch)


SETTINGS = state_machine_settings(examples=15, steps=15, long_examples=200, long_steps=40)

NAMES = ("alpha", "beta")
PATHS = ("a.txt", "b.bin", "dir/c.bin", "dir/sub/d")
ALIASES = ("best", "prod", "candidate")
#: Contents shared by files, versions and artifacts (the blob store dedups them; the last has two chunks),
#: and some of each example's own.
POOL = (b"", b"x", b"shared content\n", bytes(range(256)) * 5, random.Random(10).randbytes(1_500_000))
CONTENTS = st.one_of(st.sampled_from(range(len(POOL))).map(POOL.__getitem__), st.binary(min_size=1, max_size=300))
FILES = st.dictionaries(st.sampled_from(PATHS), CONTENTS, min_size=1, max_size=3)

Files = dict[str, bytes]


@dataclass
class ArtifactModel:
    versions: dict[int, Files] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    next_version: int = 1

    @property
    def latest(self) -> int:
        return max(self.versions)

    def delete(self, version: int, delete_aliases: bool) -> bool:
        """Whether deleting ``version`` succeeds (custom aliases on it refuse unless deleted with it)."""
        protected = [a for a, v in self.aliases.items() if v == version]
        if protected and not delete_aliases:
            return False
        for alias in protected:
            del self.aliases[alias]
        del self.versions[version]
        return True

    def all_aliases(self) -> dict[str, int]:
        return {**self.aliases, "latest": self.latest}


@dataclass
class RegistryModel:
    """What the registry should answer: artifacts by name, each with versions by number and aliases."""

    artifacts: dict[str, ArtifactModel] = field(default_factory=dict)

    def log(self, name: str, files: Files, aliases: tuple[str, ...]) -> tuple[int, bool]:
        """(the version, whether it is new): content equal to the newest version makes none."""
        art = self.artifacts.setdefault(name, ArtifactModel())
        created = not art.versions or art.versions[art.latest] != files
        if created:
            art.versions[art.next_version] = dict(files)
            art.next_version += 1
        for alias in aliases:
            art.aliases[alias] = art.latest
        return art.latest, created

    def resolve(self, name: str, selector: str) -> int | None:
        art = self.artifacts[name]
        if selector.startswith("v") and selector[1:].isdigit():
            number = int(selector[1:])
            return number if number in art.versions else None
        return art.all_aliases().get(selector)


class RegistryMachine(RuleBasedStateMachine):
    """Subclassed per test with ``registry`` and ``workdir`` set (see :func:`_machine_for`)."""

    registry = None
    workdir = ""
    counts: dict[str, int] = {}

    @initialize()
    def fresh_project(self) -> None:
        self.project = "model-" + uuid.uuid4().hex[:10]
        self.model = RegistryModel()

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _known(self) -> list[str]:
        """Artifacts with at least one version left (one whose versions are all deleted is not listed)."""
        return sorted(name for name, art in self.model.artifacts.items() if art.versions)

    @rule(name=st.sampled_from(NAMES), files=FILES, aliases=st.lists(st.sampled_from(ALIASES), max_size=2))
    def log(self, name: str, files: Files, aliases: list[str]) -> None:
        result = log_files(self.registry, self.workdir, self.project, name, files, aliases=aliases)
        expected, created = self.model.log(name, files, tuple(aliases))
        assert (result.version.version, result.created) == (expected, created)
        self._count("logs")
        self._count("operations")

    @precondition(lambda self: self._known())
    @rule(data=st.data(), delete_aliases=st.booleans())
    def delete_version(self, data, delete_aliases: bool) -> None:
        name = data.draw(st.sampled_from(self._known()))
        art = self.model.artifacts[name]
        version = data.draw(st.integers(1, art.next_version))
        if version not in art.versions:
            with pytest.raises(VersionNotFoundError):
                self.registry.delete_version(self.project, name, version, delete_aliases=delete_aliases)
        elif art.delete(version, delete_aliases):
            self.registry.delete_version(self.project, name, version, delete_aliases=delete_aliases)
            self._count("deletions")
        else:
            with pytest.raises(AliasProtectedError):
                self.registry.delete_version(self.project, name, version, delete_aliases=delete_aliases)
        self._count("operations")

    @precondition(lambda self: self._known())
    @rule(data=st.data(), alias=st.sampled_from(ALIASES))
    def set_alias(self, data, alias: str) -> None:
        name = data.draw(st.sampled_from(self._known()))
        art = self.model.artifacts[name]
        version = data.draw(st.integers(1, art.next_version))
        if version in art.versions:
            self.registry.set_alias(self.project, name, alias, version)
            art.aliases[alias] = version
        else:
            with pytest.raises(VersionNotFoundError):
                self.registry.set_alias(self.project, name, alias, version)
        self._count("operations")

    @precondition(lambda self: self._known())
    @rule(data=st.data(), alias=st.sampled_from((*ALIASES, "latest")))
    def delete_alias(self, data, alias: str) -> None:
        name = data.draw(st.sampled_from(self._known()))
        art = self.model.artifacts[name]
        if alias == "latest":
            with pytest.raises(AliasError):
                self.registry.delete_alias(self.project, name, alias)
        elif alias in art.aliases:
            self.registry.delete_alias(self.project, name, alias)
            del art.aliases[alias]
        else:
            with pytest.raises(VersionNotFoundError):
                self.registry.delete_alias(self.project, name, alias)
        self._count("operations")

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def resolve(self, name: str, data) -> None:
        if name not in self._known():
            with pytest.raises((ArtifactNotFoundError, ProjectNotFoundError)):
                self.registry.resolve(self.project, name, "latest")
            self._count("operations")
            return
        art = self.model.artifacts[name]
        selector = data.draw(
            st.one_of(st.sampled_from((*ALIASES, "latest")), st.integers(1, art.next_version).map(lambda n: f"v{n}"))
        )
        expected = self.model.resolve(name, selector)
        if expected is None:
            with pytest.raises(VersionNotFoundError):
                self.registry.resolve(self.project, name, selector)
        else:
            info = self.registry.resolve(self.project, name, selector)
            files = art.versions[expected]
            assert info.version == expected
            assert {e.path: e.size for e in info.manifest} == {p: len(b) for p, b in files.items()}
            assert sorted(info.aliases) == sorted(a for a, v in art.all_aliases().items() if v == expected)
        self._count("operations")

    @precondition(lambda self: self._known())
    @rule(data=st.data())
    def download(self, data) -> None:
        import wanllmdb

        name = data.draw(st.sampled_from(self._known()))
        art = self.model.artifacts[name]
        version = data.draw(st.sampled_from(sorted(art.versions)))
        root = os.path.join(self.workdir, "dl-" + uuid.uuid4().hex[:10])
        wanllmdb.Api().artifact(f"{self.project}/{name}:v{version}").download(root)
        found = {}
        for dirpath, _dirs, names in os.walk(root):
            for file in names:
                local = os.path.join(dirpath, file)
                with open(local, "rb") as f:
                    found[os.path.relpath(local, root).replace(os.sep, "/")] = f.read()
        assert found == art.versions[version]
        self._count("downloads")
        self._count("operations")
        self._count("bytes compared", sum(len(b) for b in found.values()))

    @invariant()
    def listings_match(self) -> None:
        if not hasattr(self, "model") or not self.model.artifacts:
            return
        if not self._known():
            return
        summaries = {s.name: s for s in self.registry.list_artifacts(self.project)}
        assert sorted(summaries) == self._known()
        for name in self._known():
            art = self.model.artifacts[name]
            info = self.registry.get_artifact(self.project, name)
            assert [v.version for v in info.versions] == sorted(art.versions)
            assert dict(info.aliases) == art.all_aliases()
            assert (summaries[name].latest_version, summaries[name].version_count) == (art.latest, len(art.versions))


def _machine_for(registry, workdir: str) -> type[RegistryMachine]:
    return type("Machine", (RegistryMachine,), {"registry": registry, "workdir": workdir, "counts": {}})


def test_registry_answers_as_the_model_does(registry, tmp_path):
    machine = _machine_for(registry, str(tmp_path))
    run_state_machine_as_test(machine, settings=SETTINGS)
    logging.getLogger(__name__).info("registry model: %s", machine.counts)
    assert machine.counts["logs"] > SETTINGS.max_examples
    assert machine.counts["downloads"] > 0 and machine.counts.get("deletions", 0) > 0
