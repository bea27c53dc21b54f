"""Property tests: loading a manifest by its fast path gives what the full checks give, entry by entry.

``Manifest.from_dict`` builds plain entries without ``ManifestEntry.__post_init__`` when it can prove them
valid cheaply. Whatever the input, the manifest it returns, or the typed error and message it raises, must
be those of the reference: every entry through ``ManifestEntry.from_dict`` then ``Manifest.from_entries``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanllmdb.errors import InvalidManifestError
from wanllmdb.manifest import Manifest, ManifestEntry
from wanllmdb.manifest.entry import MAX_FILE_SIZE, _plain_entry

MD5 = "0123456789abcdef" * 2
SHA = "fedcba9876543210" * 4

# Paths and digests built from the characters where the rules bite: separators, dots, NUL, non-ASCII, a
# lone surrogate (not UTF-8), and long runs (segment and path byte limits).
_path_piece = st.sampled_from(["a", "b", "/", ".", "..", "\x00", "é", "\ud800", "x" * 120, "y" * 254, "-_ "])
paths = st.one_of(
    st.lists(_path_piece, max_size=8).map("".join),
    st.text(max_size=20),
    st.sampled_from(["a", "a/b", "a/.b", ".a", "a/..", "a/./b", "a//b", "/a", "a/", "é/" * 130, "z" * 256]),
    st.integers(),
    st.none(),
)
sizes = st.one_of(
    st.integers(min_value=-2, max_value=2**64),
    st.sampled_from([0, 1, -1, MAX_FILE_SIZE, MAX_FILE_SIZE + 1, True, False, 1.0, "1", None]),
)


def _digests(length: int, valid: str) -> st.SearchStrategy:
    return st.one_of(
        st.just(valid),
        st.text(alphabet="0123456789abcdefABCDEFg \n\x00é", min_size=length - 1, max_size=length + 1),
        st.text(alphabet="0123456789abcdef", min_size=length - 1, max_size=length + 1),
        st.sampled_from([valid.upper(), valid[:-1] + "\ud800", valid[:-1] + "é", b"0" * length, None, 7]),
    )


entries = st.fixed_dictionaries(
    {"path": paths, "size": sizes, "md5": _digests(32, MD5), "sha256": _digests(64, SHA)},
    optional={
        "chunk_size": st.sampled_from([0, 1, 4]),
        "chunks": st.just([SHA]),
        "ref": st.just("file:///x"),
        "extra": st.just(1),
    },
)
_fields = {"path": paths, "size": sizes, "md5": _digests(32, MD5), "sha256": _digests(64, SHA)}


@st.composite
def near_plain(draw) -> dict:
    """A valid plain entry with one field drawn from its strategy above, or one key added: each proof of
    the fast path is then tested alone (a random entry is almost never wrong in one field only)."""
    item = {"path": "dir/file.bin", "size": 3, "md5": MD5, "sha256": SHA}
    field = draw(st.sampled_from([*_fields, "extra"]))
    if field == "extra":
        item[draw(st.sampled_from(["chunk_size", "chunks", "ref", "etag", "other"]))] = draw(
            st.sampled_from([0, None, "file:///x", [SHA]])
        )
    else:
        item[field] = draw(_fields[field])
    return item


# Mostly valid entries, so that whole manifests often load and duplicates and clashes are reached.
plain = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["a", "b", "a/b", "c/d", "c/d/e", "f.txt"]),
        "size": st.just(3),
        "md5": st.just(MD5),
        "sha256": st.just(SHA),
    }
)
items = st.one_of(entries, plain, st.sampled_from([[], "a", None, {"path": "a"}]))


def _outcome(load):
    try:
        return "ok", load()
    except InvalidManifestError as exc:
        return type(exc), str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(near_plain(), entries))
def test_fast_entry_is_only_ever_the_entry_the_full_checks_build(item):
    fast = _plain_entry(item)
    full = _outcome(lambda: ManifestEntry.from_dict(item))
    if fast is not None:
        assert full == ("ok", fast)
        assert repr(fast) == repr(full[1]) and hash(fast) == hash(full[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(items, max_size=6))
def test_from_dict_loads_or_refuses_exactly_as_the_full_checks(listed):
    def reference():
        return Manifest.from_entries(ManifestEntry.from_dict(item) for item in listed)

    expected = _outcome(reference)
    assert _outcome(lambda: Manifest.from_dict({"format": 1, "entries": list(listed)})) == expected
    assert _outcome(lambda: Manifest.from_dict({"entries": list(listed)}, consume=True)) == expected
    if expected[0] == "ok":
        assert list(expected[1].entries) == sorted(expected[1].entries)


@pytest.mark.parametrize("path", ["a", "dir/sub/file.bin", "x" * 255, "a b/c-d_e.f"])
def test_plain_entries_take_the_fast_path(path):
    entry = _plain_entry({"path": path, "size": 5, "md5": MD5, "sha256": SHA})
    assert entry == ManifestEntry(path, 5, MD5, SHA)


@pytest.mark.parametrize(
    "item",
    [
        {"path": ".hidden", "size": 5, "md5": MD5, "sha256": SHA},
        {"path": "é", "size": 5, "md5": MD5, "sha256": SHA},
        {"path": "a/" + "x" * 254, "size": 5, "md5": MD5, "sha256": SHA},
        {"path": "a", "size": 5, "md5": MD5, "sha256": SHA, "ref": "file:///a"},
    ],
)
def test_entries_outside_the_fast_path_still_load_through_the_full_checks(item):
    assert _plain_entry(item) is None
    manifest = Manifest.from_dict({"entries": [item]})
    assert manifest.get(item["path"]) == ManifestEntry.from_dict(item)


# One near miss for each proof of the fast path, so that dropping any proof fails here whatever hypothesis draws.
_VALID = {"path": "dir/file.bin", "size": 3, "md5": MD5, "sha256": SHA}
_NEAR_MISSES = [
    *(
        {**_VALID, "path": path}
        for path in [
            "",
            "/a",
            ".a",
            "a/",
            "a//b",
            "a/.b",
            "a/./b",
            "a/..",
            "a\x00b",
            "é",
            "\ud800",
            "z" * 256,
            "a/" + "z" * 254,
            7,
        ]
    ),
    *({**_VALID, "size": size} for size in [-1, MAX_FILE_SIZE + 1, True, 1.0, "3"]),
    *({**_VALID, "md5": md5} for md5 in [MD5[:-1], MD5 + "0", MD5.upper(), MD5[:-1] + "g", MD5[:-1] + "é"]),
    *({**_VALID, "sha256": sha} for sha in [SHA[:-1], SHA + "0", SHA.upper(), SHA[:-1] + "\ud800", SHA[:-1] + " "]),
    {**_VALID, "etag": "x"},
    {"path": "a", "size": 3, "md5": MD5},
]


@pytest.mark.parametrize("item", _NEAR_MISSES)
def test_each_near_miss_loads_or_fails_as_the_full_checks_decide(item):
    fast = _plain_entry(item)
    full = _outcome(lambda: ManifestEntry.from_dict(item))
    assert fast is None or full == ("ok", fast)
    assert _outcome(lambda: Manifest.from_dict({"entries": [item]})) == _outcome(
        lambda: Manifest.from_entries([ManifestEntry.from_dict(item)])
    )
