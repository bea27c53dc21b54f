"""Benchmark inputs, made on the spot: random (incompressible) large files and trees of small files."""

from __future__ import annotations

import os

_BLOCK = 16 * 1024 * 1024


def make_file(path: str, size: int, seed: int = 0) -> str:
    """A file of ``size`` pseudo-random bytes (reused if it already has that size)."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = os.urandom(_BLOCK)
    with open(path, "wb") as f:
        written = 0
        counter = seed
        while written < size:
            n = min(_BLOCK, size - written)
            # vary each block cheaply so no two blocks (and no two files) are identical
            f.write(counter.to_bytes(8, "little") + block[8:n] if n > 8 else block[:n])
            written += n
            counter += 1
    return path


def make_small_files(root: str, count: int, size: int = 4096, seed: int = 0) -> str:
    """``count`` distinct files of ``size`` bytes under ``root`` in subfolders of 1,000."""
    marker = f"{root.rstrip(os.sep)}.complete-{count}-{size}-{seed}"
    if os.path.exists(marker):
        return root
    base = os.urandom(size)
    for i in range(count):
        folder = os.path.join(root, f"d{i // 1000:03d}")
        if i % 1000 == 0:
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{i:06d}.bin"), "wb") as f:
            f.write((seed * 10_000_000 + i).to_bytes(8, "little") + base[8:])
    open(marker, "w").close()
    return root
