"""The ``wanllmdb`` command line (nothing imports this package)."""
