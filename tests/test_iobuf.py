"""Writes into files in ``WRITE_STEP`` pieces: every byte lands where it belongs, however the calls split it."""

from __future__ import annotations

import io
import os

import pytest

from wanllmdb.iobuf import WRITE_STEP, pwrite_all, write_all

SIZES = [0, 1, WRITE_STEP - 1, WRITE_STEP, WRITE_STEP + 1, 5 * WRITE_STEP + 123, (1 << 20) + 7]


@pytest.mark.parametrize("size", SIZES)
def test_pwrite_all_writes_every_byte_at_its_offset(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(b"\xff" * 10)
    fd = os.open(path, os.O_RDWR)
    try:
        pwrite_all(fd, memoryview(data), 10, WRITE_STEP)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\xff" * 10 + data


@pytest.mark.parametrize("size", SIZES)
def test_write_all_writes_every_byte_in_order(tmp_path, size):
    data = os.urandom(size)
    with open(tmp_path / "f", "wb") as f:
        f.write(b"head")
        write_all(f, data)
    assert (tmp_path / "f").read_bytes() == b"head" + data


class _Stingy(io.RawIOBase):
    """A raw file that takes at most 1,000 bytes a call and records each call's size."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.calls: list[int] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = min(len(b), 1000)
        self.calls.append(len(b))
        self.got += bytes(b[:n])
        return n


def test_write_all_goes_on_after_short_writes_and_never_asks_more_than_a_step():
    data = os.urandom(3 * WRITE_STEP + 17)
    raw = _Stingy()
    write_all(raw, data)
    assert bytes(raw.got) == data
    assert max(raw.calls) <= WRITE_STEP


def test_pwrite_all_without_a_step_writes_in_one_call_where_it_can(tmp_path):
    data = os.urandom(3 * WRITE_STEP)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
