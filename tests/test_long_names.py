"""Every name that can be logged can be downloaded and mounted (issue 10, point 5): file names up to NAME_MAX
(255 bytes of UTF-8) log, download and read through the mount; a longer one is refused when it is added."""

from __future__ import annotations

import os

import pytest

from wanllmdb.errors import InvalidPathError

# 234..255 bytes, ASCII and multibyte (each "é" is 2 bytes, each "字" 3).
NAMES = [
    "a" * 234 + ".bin",
    "b" * 251 + ".bin",
    "é" * 125 + "x.txt",  # 250 + 5 = 255 bytes
    "字" * 84 + "abc",  # 252 + 3 = 255 bytes
]


def test_names_up_to_name_max_log_download_and_verify(backend, tmp_path):
    import wanllmdb

    assert all(234 <= len(n.encode()) <= 255 for n in NAMES)
    run = wanllmdb.init(project="long-names")
    art = wanllmdb.Artifact("names", type="dataset")
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(NAMES):
        (src / name).write_bytes(f"content {i}".encode() * (i + 1))
    art.add_dir(str(src), name="deep")
    run.log_artifact(art)
    used = run.use_artifact("names:latest")
    root = used.download(str(tmp_path / "dl"))
    for i, name in enumerate(NAMES):
        assert open(os.path.join(root, "deep", name), "rb").read() == f"content {i}".encode() * (i + 1)
    assert used.verify(root) is True
    single = used.get_path(f"deep/{NAMES[0]}").download(str(tmp_path / "one"))
    assert os.path.basename(single) == NAMES[0]
    leftovers = [f for _d, _s, files in os.walk(tmp_path / "dl") for f in files if f.startswith(".wanllmdb-")]
    assert leftovers == []
    run.finish()


def test_a_name_longer_than_name_max_is_refused_when_added(tmp_path):
    import wanllmdb

    path = tmp_path / "short.bin"
    path.write_bytes(b"x")
    art = wanllmdb.Artifact("names", type="dataset")
    with pytest.raises(InvalidPathError, match="255"):
        art.add_file(str(path), name="c" * 256)
    with pytest.raises(InvalidPathError):
        art.add_file(str(path), name="é" * 128)  # 256 bytes


@pytest.mark.fuse
def test_names_up_to_name_max_read_through_the_mount(local_registry, mounter, project, tmp_path):
    from tests.support.mount import log_version

    files = {f"d/{name}": name.encode() for name in NAMES}
    log_version(local_registry, tmp_path, project, "m", files)
    mnt = mounter()
    listed = sorted(os.listdir(mnt.path / project / "m" / "v1" / "d"))
    assert listed == sorted(NAMES)
    for name in NAMES:
        assert (mnt.path / project / "m" / "v1" / "d" / name).read_bytes() == name.encode()
