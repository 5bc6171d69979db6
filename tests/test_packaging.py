"""The source distribution: every file once under one module name, and its tests run from it.

Built the way a packager builds it (``python -m build --sdist``), unpacked into a temporary
directory, and its own test suite run there (a fast slice of it), with ``histdata`` imported
from the unpacked copy rather than from this checkout.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Fast tests that still read the files an sdist must carry: config.toml, deploy/, the SQL.
SLICE = ["tests/test_config.py", "tests/test_deploy.py", "tests/test_timeutil.py"]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (archive,) = out.glob("histdata-*.tar.gz")
    return archive


def test_each_module_is_shipped_once_under_histdata(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = [name.split("/", 1)[1] for name in tar.getnames() if "/" in name]
    modules = [name for name in names if name.endswith(".py") and not name.startswith("tests/")]
    assert len(modules) == len(set(modules))
    # The top-level links into histdata/ are for readers; the archive has each file once.
    for link in ("actors/", "storage/", "supervisor/", "sql/"):
        assert not any(name.startswith(link) for name in names), link
    for needed in (
        "LICENSE",
        "tests/conftest.py",
        "config.toml",
        "histdata/storage/database.py",
        "histdata/sql/0001_core.sql",
    ):
        assert needed in names, needed


def test_unpacked_sdist_runs_its_tests(sdist: Path, tmp_path: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.glob("histdata-*")
    where = subprocess.run(
        [sys.executable, "-c", "import histdata; print(histdata.__file__)"],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(tree)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
