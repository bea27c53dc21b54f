"""Run the wanllmdb benchmarks and print a table of figures, baselines and ratios.

    python benchmarks/run.py --quick        # about a minute
    python benchmarks/run.py                # the full run (1 GB / 10,000 files / 100,000-file listing / 4 GB)

Results are also written as JSON to benchmarks/results/<date>.json (or --out). Each workload makes its own
data under --workdir, starts what it needs (a server on loopback, a mount) and stops it again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.context import FULL, QUICK, Context  # noqa: E402
from benchmarks.harness import machine_info, print_table, write_json  # noqa: E402

GROUPS = ("local", "http", "mount", "s3", "gc", "fsspec", "scale")


def _clear(workdir: str) -> None:
    """Remove everything in ``workdir`` but the generated inputs."""
    for name in os.listdir(workdir):
        if name != "inputs":
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--only", help=f"comma-separated groups to run (of {', '.join(GROUPS)})")
    parser.add_argument("--workdir", help="where inputs and registries go (default: a temp dir, removed after); "
                        "reused inputs are kept, everything else in it is removed first, and after each group "
                        "that succeeded")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/<date>[-quick].json)")
    args = parser.parse_args(argv)

    groups = args.only.split(",") if args.only else list(GROUPS)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="wanllmdb-bench-", dir="/var/tmp")
    if args.workdir:  # keep the generated inputs, never a registry or cache: every run starts cold
        os.makedirs(workdir, exist_ok=True)
        _clear(workdir)
    ctx = Context(workdir=workdir, sizes=QUICK if args.quick else FULL, quick=args.quick)
    free_at_start = shutil.disk_usage(workdir).free
    results = []
    failed: dict[str, str] = {}
    started = time.time()
    try:
        for group in groups:
            module = importlib.import_module(f"benchmarks.bench_{group}")
            t0 = time.time()
            try:
                results.extend(module.run(ctx))
            except Exception:  # report the others, then fail the command
                failed[group] = traceback.format_exc()
                sys.stderr.write(f"[{group}] FAILED:\n{failed[group]}")
                continue
            sys.stderr.write(f"[{group}] done in {time.time() - t0:.0f}s\n")
            # A group's registries and caches go once it is done (a failed group's stay, to be looked at):
            # left in place they filled a 40 GB disk before the mount group's 4 GB read had finished.
            _clear(workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    stamp = dt.date.today().isoformat() + ("-quick" if args.quick else "")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{stamp}.json")
    meta = {**machine_info(), "mode": "quick" if args.quick else "full", "seconds": round(time.time() - started),
            "sizes": ctx.sizes.__dict__, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "workdir_free_bytes_at_start": free_at_start,
            "failed_groups": failed}
    write_json(out, results, meta)
    sys.stderr.write(f"wrote {out}\n")
    if failed:
        sys.stderr.write(f"groups that failed: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
