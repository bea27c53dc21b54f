"""The read-only FUSE filesystem behind ``wanllmdb mount`` (DESIGN.md "Mount").

- ``tree``: path -> node values built from manifests and listings (pure);
- ``catalog``: registry metadata in bounded TTL/LRU caches;
- ``index``: versions too large for memory, indexed on disk (SQLite) and read a directory at a time;
- ``reader``: file bytes through the shared cache: verified chunks, read-ahead;
- ``flight``: deduplicated registry calls with deadlines;
- ``core``: ``ArtifactFS``, the filesystem logic, raising :mod:`wanllmdb.errors` types;
- ``fuse_ops``: the thin mfusepy skin, the only module that imports fuse or knows errno;
- ``process``: checks, serving, background start, unmount.

Importing this package loads no FUSE library; only ``fuse_ops`` does.
"""
