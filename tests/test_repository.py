"""The repository keeps its promises: the README's test command is what CI runs."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def test_ci_runs_exactly_the_readme_test_command():
    readme_blocks = re.findall(r"```bash\n(.*?)```", _read("README.md"), re.S)
    test_command = readme_blocks[1].strip().splitlines()[-1].split("&&")[-1].strip()
    assert test_command.startswith("python -m pytest")
    ci_lines = [line.strip() for line in _read(".ci/run").splitlines()]
    assert test_command in ci_lines
    assert "export WANLLMDB_REQUIRE_FUSE=1" in ci_lines
    assert "export WANLLMDB_REQUIRE_POSTGRES=1" in ci_lines
    assert "export WANLLMDB_REQUIRE_SEAWEEDFS=1" in ci_lines
    assert "export WANLLMDB_REQUIRE_BROWSER=1" in ci_lines


def test_readme_first_command_installs_and_runs_the_quickstart():
    first = re.findall(r"```bash\n(.*?)```", _read("README.md"), re.S)[0]
    assert 'pip install -e ".[server,dev]"' in first and "examples/quickstart.py" in first
    assert "wanllmdb mount" in first and "wanllmdb unmount" in first


def test_readme_first_command_installs_every_apt_package_ci_installs():
    first = re.findall(r"```bash\n(.*?)```", _read("README.md"), re.S)[0]
    readme_packages = set(re.search(r"apt-get install -y ([^&]+)&&", first).group(1).split())
    ci_packages: set[str] = set()
    for line in _read(".ci/run").splitlines():
        match = re.search(r"apt-get install -y -qq (.+?)(?:>|$)", line)
        if match:
            ci_packages.update(word for word in match.group(1).split() if not word.startswith(("-", "$")))
    assert ci_packages and ci_packages <= readme_packages, ci_packages - readme_packages
