#!/usr/bin/env bash
# The many-core benchmark run (issue 14) on a machine lent through the `device` tool: 16 cores, root,
# /dev/fuse, CPython 3.12, no package registry. Two steps:
#
#   bash benchmarks/device_kit.sh prepare      # here: wheels for CPython 3.12 and FUSE's .debs into
#                                              # .device-kit/ (ignored by git through .git/info/exclude)
#   device run, carry [".device-kit"], command:
#     bash benchmarks/device_kit.sh run http,mount
#                                              # there: installs from the kit, runs the groups, writes
#                                              # $OUT/many-core.json and $OUT/many-core.log
#
# `run` also works here (OUT defaults to /tmp/device-out), which is how the kit is checked before a
# session spends device time on it: `bash benchmarks/device_kit.sh check` runs it with python3.12 in a
# clean environment, the quick sizes (PYTHON312=/path/to/python3.12 where it is not on PATH). The mount
# group's fio rows are skipped where fio is missing (its Debian package pulls in librados and a dozen
# libraries); everything else runs as here. Time: the http and mount groups at full size took 8 minutes
# here on 2 cores with their inputs made (a fresh machine makes ~6 GB of them first), and one device
# command may run 10: on a first try run `run http` and `run mount` as two commands, or set QUICK=1.
set -euo pipefail

KIT=.device-kit
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"

# What the client, the server and the benchmark import (the server's S3 and PostgreSQL backends are imported
# only when asked for, so boto3 and psycopg stay behind), with everything they require, at the versions of
# this checkout's environment.
ROOTS="requests urllib3 cachetools platformdirs tqdm mfusepy shtab fsspec blake3 ijson fastapi uvicorn httptools
jinja2 numpy safetensors"

closure() {
    python3 - $ROOTS <<'PY'
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement

env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux", "extra": ""}
todo, seen = list(sys.argv[1:]), {}
while todo:
    name = todo.pop().lower().replace("_", "-")
    if name in seen:
        continue
    dist = distribution(name)
    seen[name] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(req.name)
print(" ".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
}

prepare() {
    mkdir -p "$KIT/whl" "$KIT/deb"
    grep -qxF "/$KIT/" .git/info/exclude 2>/dev/null || echo "/$KIT/" >> .git/info/exclude
    local pins
    pins=$(closure)
    rm -f "$KIT"/whl/*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$KIT/whl" $pins
    (cd "$KIT/deb" && rm -f ./*.deb && apt-get download -q fuse3 libfuse3-3)
    du -sh "$KIT"
}

run() {
    local groups=${1:-http,mount}
    local out=${OUT:-/tmp/device-out}
    local root=/tmp/device-kit-root site=/tmp/device-kit-site
    mkdir -p "$out" "$root"
    for deb in "$KIT"/deb/*.deb; do dpkg -x "$deb" "$root"; done  # unpacked beside /, never into it
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$KIT"/whl/*.whl
    export PYTHONPATH="$site:$HERE" PYTHONUNBUFFERED=1
    export PATH="$root/usr/bin:$root/bin:$root/sbin:$PATH"
    export FUSE_LIBRARY_PATH
    FUSE_LIBRARY_PATH=$(find "$root" -name 'libfuse3.so.3*' -type f | head -1)
    {
        echo "cores $(nproc); $(python3 --version); fuse $FUSE_LIBRARY_PATH; /dev/fuse $(ls -l /dev/fuse)"
        python3 benchmarks/run.py ${QUICK:+--quick} --only "$groups" --workdir /tmp/device-bench \
            --out "$out/many-core.json"
    } 2>&1 | tee "$out/many-core.log"
}

check() {
    # The kit in a clean environment here, as the device machine will see it: python3.12, no virtualenv,
    # no user site, the quick sizes.
    local py
    py=${PYTHON312:-$(python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || true)}
    [ -x "$py" ] || { echo "the check needs python3.12 (on PATH, or PYTHON312=/path/to/python3.12)" >&2; exit 1; }
    local bin=/tmp/device-kit-bin
    mkdir -p "$bin" && ln -sf "$py" "$bin/python3"
    env -i HOME=/tmp/device-kit-home PATH="$bin:/usr/local/bin:/usr/bin:/bin" QUICK=1 OUT=/tmp/device-out \
        bash "$0" run "${1:-http,mount}"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run "${2:-}" ;;
    check) check "${2:-}" ;;
    *) echo "usage: $0 prepare | run [GROUPS] | check [GROUPS]" >&2; exit 2 ;;
esac
