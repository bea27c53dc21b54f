"""The registry's content-addressed blob directory (used by the embedded registry and by the server).

``<root>/blobs/ab/abcdef...`` holds one file per SHA-256. A blob is written to ``<root>/tmp``, checked
(size, SHA-256, and MD5 when one is given), then renamed into place, so a blob that exists is complete
and correct; a writer killed at any point leaves at most a stale temporary file, removed by
:meth:`BlobStore.remove_stale_tmp`.

A blob can also arrive *unaddressed* (``begin(None, size)``, :meth:`BlobStore.put_unhashed`): its SHA-256
is computed while it is written and names it at the end. That lets a client upload a new large file in the
same read that hashes it, instead of reading it once to hash and again to upload; the embedded registry
stores a local file that way with :meth:`BlobStore.put_unhashed` (a reflink where possible, else each
hashed piece written from the same buffer).

The store reports every newly installed blob to ``on_install`` with its size and, when it was computed,
its MD5 (the registry keeps an index of blob sizes, see ``LocalRegistry.known_sizes``, and checks every
manifest entry against what was stored). A store made with ``compute_md5`` (the server's) computes the MD5
of every blob it receives, so that no manifest can claim another MD5 for stored bytes.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..cache.materialize import FICLONE
from ..cache.store import BlobWriter
from ..errors import BlobNotFoundError, ChecksumError, InvalidInputError
from ..iobuf import WRITE_STEP, buffer_for, pwrite_all, read_full, write_all
from ..killpoints import kill_point
from ..manifest.digest import THREAD_MIN_PIECE, ChunkDigester, Digester, FileDigest, hash_file, md5_pool
from ..settings import CHUNK_SIZE
from ..tmpfiles import reclaim_dead, writer_tag

logger = logging.getLogger(__name__)

#: Largest piece ``read_range_into`` hands its writer at once.
RANGE_PIECE = 1 << 20
#: Piece size of :meth:`BlobStore.put_unhashed`'s copy (see ``_copy_hashing``): the digester's MD5 thread
#: takes pieces from 1 MiB, and a piece of the L2 cache's size stays there from the read to the write.
COPY_PIECE = 1 << 20
#: What a filesystem (or a pair of them) without reflinks answers to ``FICLONE``.
NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS)


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lowercase hex SHA-256, else InvalidInputError naming it."""
    return _check_sha(sha256)


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise InvalidInputError(f"not a SHA-256 hex digest: {sha256[:80]!r}")
    return sha256


#: Called with (sha256, size, md5 hex or None) of newly installed blobs.
InstallListener = Callable[[Sequence[tuple[str, int, str | None]]], None]


class IncomingBlob:
    """A blob being written: ``write`` pieces, then ``commit`` (checks and renames) or ``abort``.

    With ``sha256=None`` the blob is unaddressed: ``commit`` names it by the SHA-256 of what was written
    (and sets :attr:`sha256`).
    """

    def __init__(
        self, store: BlobStore, sha256: str | None, size: int, md5_hex: str | None, chunks: ChunkDigester | None = None
    ) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.md5_hex = md5_hex
        #: The MD5 computed while receiving (set by ``commit`` when the store computes MD5s).
        self.md5: str | None = None
        #: An MD5 to record without computing it (see ``BlobStore.put_file``).
        self.trusted_md5: str | None = None
        self.received = 0
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5_hex or store.compute_md5 else None
        #: The chunk digests of what was received, when the uploader asked for them (see ``ChunkDigester``).
        self.chunks = chunks
        name = sha256 or "unaddressed"
        self.tmp = os.path.join(store.root, "tmp", f"{name}.{writer_tag()}.{secrets.token_hex(6)}")
        self._file = open(self.tmp, "wb", buffering=0)  # written in WRITE_STEP pieces: no buffer between
        #: The threads of :meth:`submit` (opened by its first call): the writer lane, then the MD5 lane.
        self._lanes: tuple[ThreadPoolExecutor, ThreadPoolExecutor | None] | None = None
        #: Set by the first lane job that fails: the jobs queued behind it do nothing.
        self._lane_error: BaseException | None = None

    @property
    def label(self) -> str:
        return f"blob {self.sha256[:12]}" if self.sha256 else "upload"

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self._claim(n)
        if self._md5 is not None:
            self._md5.update(data)
        self._hash_and_write(data)
        kill_point("blob.write")
        return n

    def write_many(self, pieces: Sequence[bytes]) -> None:
        """``write`` of each piece in turn, with their MD5 on a worker thread beside the rest (hashlib releases
        the GIL on large buffers): a big upload then costs the server about its slowest pass, not the sum of
        MD5, SHA-256, chunk digests and the write. Pieces must not change until this returns."""
        total = sum(len(piece) for piece in pieces)
        if self._md5 is None or total < THREAD_MIN_PIECE:
            for piece in pieces:
                self.write(piece)
            return
        self._claim(total)
        md5 = md5_pool().submit(_update_all, self._md5, pieces)
        try:
            self._write_batch(pieces)
        finally:
            md5.result()  # never leave the worker hashing into a blob being committed or aborted

    def submit(self, pieces: Sequence[bytes]) -> list[Future[None]]:
        """Queue a batch of pieces and return at once, with a future per lane the batch goes through.

        The blob's two lanes are threads of its own, opened by the first call: one computes the SHA-256 and
        chunk digests and writes, the other the MD5 (when one is computed). Each takes the batches in the
        order submitted, at its own pace: a lane that is slower on one batch no longer holds the other one
        back until both are done, as :meth:`write_many` does, so that a server receiving a large upload
        keeps both of a small machine's cores busy (1 GiB plain PUTs, interleaved runs: 2.23-2.31 s against
        2.45 s with :meth:`write_many` per batch; see docs/ARCHITECTURE.md, round 10). After a job fails,
        the jobs queued behind it do nothing and the blob can only be aborted. Pieces must not change until
        the futures are done; wait for all of them before :meth:`commit` or :meth:`abort`.

        Raises:
            ChecksumError: the batch takes the blob past its declared size (nothing is queued).
        """
        self._claim(sum(len(piece) for piece in pieces))
        if self._lanes is None:
            tag = (self.sha256 or "upload")[:12]
            self._lanes = (
                ThreadPoolExecutor(1, thread_name_prefix=f"wanllmdb-blob-{tag}"),
                ThreadPoolExecutor(1, thread_name_prefix=f"wanllmdb-md5-{tag}") if self._md5 is not None else None,
            )
        writer, md5 = self._lanes
        futures = [writer.submit(self._lane_job, self._write_batch, pieces)]
        if md5 is not None:
            futures.append(md5.submit(self._lane_job, _update_all, self._md5, pieces))
        return futures

    def _lane_job(self, job: Callable[..., object], *args: object) -> None:
        if self._lane_error is not None:
            return
        try:
            job(*args)
        except BaseException as exc:
            self._lane_error = exc
            raise

    def _write_batch(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            self._hash_and_write(piece)
        kill_point("blob.write")

    def _close_lanes(self) -> None:
        """Wait for the lanes' queued jobs and stop their threads."""
        if self._lanes is not None:
            for lane in self._lanes:
                if lane is not None:
                    lane.shutdown(wait=True)
            self._lanes = None

    def _claim(self, n: int) -> None:
        """Count ``n`` more bytes received; refused past the declared size."""
        if self.received + n > self.size:
            raise ChecksumError(f"{self.label}: more than the declared {self.size} bytes", expected=str(self.size))
        self.received += n

    def _hash_and_write(self, data: bytes | memoryview) -> None:
        """Everything a received piece goes through but its MD5."""
        self._sha.update(data)
        if self.chunks is not None:
            self.chunks.update(data)
        write_all(self._file, data)

    def commit(self, *, notify: bool = True) -> bool:
        """Check and store; returns False when the blob was already stored (the copy is dropped).

        Args:
            notify: tell the store's install listener (callers installing many blobs notify once, later).

        Raises:
            ChecksumError: size, SHA-256 or MD5 differ; nothing is stored.
        """
        try:
            self._close_lanes()
            if self._lane_error is not None:
                raise self._lane_error
            self._file.close()
            if self.received != self.size:
                raise ChecksumError(
                    f"{self.label}: expected {self.size} bytes, received {self.received}",
                    expected=str(self.size),
                    actual=str(self.received),
                )
            actual = self._sha.hexdigest()
            if self.sha256 is None:
                self.sha256 = actual
            elif actual != self.sha256:
                raise ChecksumError(
                    f"blob {self.sha256[:12]}: content hashes to {actual}, not {self.sha256}",
                    expected=self.sha256,
                    actual=actual,
                )
            if self.md5_hex is not None and self._md5 is not None and self._md5.hexdigest() != self.md5_hex:
                raise ChecksumError(
                    f"blob {self.sha256[:12]}: MD5 mismatch (expected {self.md5_hex}, got {self._md5.hexdigest()})",
                    expected=self.md5_hex,
                    actual=self._md5.hexdigest(),
                )
            self.md5 = self._md5.hexdigest() if self._md5 is not None else self.trusted_md5
            return self.store._install(self.tmp, self.sha256, self.size, self.md5, notify=notify)
        finally:
            self.abort()

    def abort(self) -> None:
        self._close_lanes()
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _update_all(hasher: hashlib._Hash, pieces: Sequence[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)


class BlobStore:
    """Blobs by SHA-256 under ``root``."""

    #: Whether the store itself says which blobs it holds (a directory: a file is stored once renamed into
    #: place). False for object storage, where the registry's record of checked blobs is the authority.
    lists_itself = True

    def __init__(self, root: str, on_install: InstallListener | None = None, *, compute_md5: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.on_install = on_install
        self.compute_md5 = compute_md5
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)

    def path(self, sha256: str) -> str:
        _check_sha(sha256)
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def exists(self, sha256: str) -> bool:
        return os.path.exists(self.path(sha256))

    def size(self, sha256: str) -> int:
        try:
            return os.stat(self.path(sha256)).st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {sha256} is not stored") from None

    def list_blobs(self) -> Iterator[tuple[str, int, float]]:
        """Every blob the store holds: (sha256, size, modification time), in no particular order."""
        top = os.path.join(self.root, "blobs")
        for prefix in os.scandir(top):
            if not prefix.is_dir(follow_symlinks=False) or len(prefix.name) != 2:
                continue
            for entry in os.scandir(prefix.path):
                if _SHA256_RE.fullmatch(entry.name) and entry.name.startswith(prefix.name):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield entry.name, st.st_size, st.st_mtime

    def delete_blobs(self, sha256s: Sequence[str]) -> None:
        """Remove blobs (garbage collection); ones already gone are skipped. Open readers keep their bytes."""
        for sha in sha256s:
            try:
                os.unlink(self.path(sha))
            except FileNotFoundError:
                continue

    def md5_of(self, sha256: str) -> str:
        """MD5 (hex) of a stored blob, read once (for blobs stored before MD5s were recorded)."""
        return md5_file(self.path(sha256))

    def begin(
        self, sha256: str | None, size: int, md5: str | None = None, chunks: ChunkDigester | None = None
    ) -> IncomingBlob:
        """Start receiving a blob (``sha256=None``: unaddressed); ``md5`` may be hex or a Content-MD5 header;
        ``chunks`` computes the chunk digests of what arrives, for the uploader to compare with its own."""
        if sha256 is not None:
            _check_sha(sha256)
        if size < 0:
            raise InvalidInputError(f"blob size must not be negative: {size}")
        return IncomingBlob(self, sha256, size, _md5_hex(md5) if md5 else None, chunks)

    def put_file(self, sha256: str, size: int, src: str, md5: str | None = None) -> bool:
        """Copy a local file in as blob ``sha256`` after checking it; False if it was already stored.

        ``md5`` is recorded as the blob's MD5 unless the store computes its own: the embedded registry's
        writer is the user's own process, which computed it in the read that computed the SHA-256 checked here.

        Raises:
            ChecksumError: the file's size or SHA-256 differ (it changed since it was hashed).
        """
        if self.exists(sha256):
            return False
        incoming = self.begin(sha256, size)
        try:
            with open(src, "rb", buffering=0) as f:
                buf = buffer_for(size, COPY_PIECE)  # hashed and written while in this core's cache
                view = memoryview(buf)
                while n := f.readinto(buf):
                    incoming.write(view[:n])
        except BaseException:
            incoming.abort()
            raise
        incoming.trusted_md5 = md5
        return incoming.commit()

    def put_unhashed(
        self, src: str, size: int, chunk_size: int = CHUNK_SIZE, progress: Callable[[int], object] | None = None
    ) -> FileDigest:
        """Store a local file while computing its digests, reading it once; returns the digests.

        Where the filesystem offers reflinks (btrfs, XFS), the temporary file is made a copy-on-write clone
        of ``src`` (no byte copied) and the clone is hashed: the digests are those of the stored bytes, even
        if ``src`` changes meanwhile. Elsewhere (ext4, or ``src`` on another filesystem) the file is read once
        in 1 MiB pieces; each piece is hashed and then that same piece is written (``_copy_hashing``), so the
        bytes named are the bytes written. The blob is renamed to its SHA-256 name only once complete (a kill
        leaves a temporary file, reclaimed by the next writer).

        Raises:
            ChecksumError: the file no longer has ``size`` bytes (it changed since it was listed).
        """
        tmp = os.path.join(self.root, "tmp", f"unaddressed.{writer_tag()}.{secrets.token_hex(6)}")
        try:
            with open(src, "rb", buffering=0) as f, open(tmp, "wb", buffering=0) as out:
                if reflink(f.fileno(), out.fileno()):
                    kill_point("blob.write")
                    digest = hash_file(tmp, chunk_size, progress)
                else:
                    digest = _copy_hashing(f, out, size, chunk_size, progress)
            if digest.size != size:
                raise ChecksumError(
                    f"{src}: expected {size} bytes, read {digest.size} (the file changed while it was stored)",
                    expected=str(size),
                    actual=str(digest.size),
                )
            self._install(tmp, digest.sha256, digest.size, digest.md5)
            return digest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _install(self, tmp: str, sha256: str, size: int, md5: str | None = None, *, notify: bool = True) -> bool:
        final = self.path(sha256)
        if os.path.exists(final):
            return False
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        if notify and self.on_install is not None:
            self.on_install([(sha256, size, md5)])
        return True

    def open(self, sha256: str):
        try:
            return open(self.path(sha256), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {sha256} is not stored") from None

    def read_range_into(self, sha256: str, start: int, length: int, writer: BlobWriter) -> int:
        """Write ``length`` bytes from ``start`` into ``writer`` in pieces of at most 1 MiB; returns the count."""
        done = 0
        with self.open(sha256) as f:
            while done < length:
                data = os.pread(f.fileno(), min(RANGE_PIECE, length - done), start + done)
                if not data:
                    break
                writer.write(data)
                done += len(data)
        return done

    def remove_stale_tmp(self, max_age: float) -> int:
        """Delete temporary files of dead writers, and any older than ``max_age`` seconds."""
        removed = len(reclaim_dead(os.path.join(self.root, "tmp"))[0])
        cutoff = time.time() - max_age
        tmp_dir = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp_dir):
            path = os.path.join(tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd``'s file a copy-on-write clone of ``src_fd``'s (``FICLONE``); False where the filesystem
    (or the pair: another device) offers none, as on ext4, leaving ``dst_fd`` untouched."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno not in NO_REFLINK:
            raise
        return False


def _copy_hashing(src, out, size: int, chunk_size: int, progress: Callable[[int], object] | None) -> FileDigest:
    """Read ``src`` once in ``COPY_PIECE`` pieces; hash each piece, then write that same piece to ``out``.

    Everything happens on the reading thread (MD5 on the digester's worker), with the piece still in this
    core's cache, written with ``pwrite``. Measured on the benchmark machine, 1 GiB from page cache, CPU-s
    above hashing alone: 8 MiB pieces written by a writer thread (the old design) +1.9-2.4; 1 MiB pieces by
    a writer thread +1.9 (a copy from the other core's cache); 1 MiB pieces written on the reading thread
    +0.5-1.9. (vmsplice + splice from the same buffer measured +0.6-1.2 in the same runs: within the
    spread, so not worth a ctypes path.)
    """
    digester = Digester(chunk_size)
    piece = min(COPY_PIECE, size + 1)
    # Two page-aligned buffers in turn: the digester's MD5 of one may still run while the next is read.
    buffers = [memoryview(mmap.mmap(-1, piece)) for _ in range(2)]
    index = 0
    fd = out.fileno()
    while n := read_full(src.fileno(), buffers[index % 2]):
        data = buffers[index % 2][:n]
        digester.update(data)
        pwrite_all(fd, data, index * piece, WRITE_STEP)
        kill_point("blob.write")
        index += 1
        if progress:
            progress(n)
    return digester.result()


def md5_file(path: str) -> str:
    """MD5 (hex) of a stored blob, for blobs stored before their MD5 was recorded."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        buf = buffer_for(os.fstat(f.fileno()).st_size)
        view = memoryview(buf)
        while n := f.readinto(buf):
            md5.update(view[:n])
    return md5.hexdigest()


def _md5_hex(md5: str) -> str:
    if len(md5) == 32 and all(c in "0123456789abcdef" for c in md5.lower()):
        return md5.lower()
    try:
        raw = base64.b64decode(md5, validate=True)
    except ValueError:
        raise InvalidInputError(f"not an MD5 digest: {md5[:60]!r}") from None
    if len(raw) != 16:
        raise InvalidInputError(f"not an MD5 digest: {md5[:60]!r}")
    return raw.hex()
