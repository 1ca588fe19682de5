"""The wheel a production install gets: built from this checkout, installed into a fresh
virtualenv and run from a folder outside the checkout. It serves and checks data maps, and
carries what `dsrflow serve` reads (the deployments' YAML, the migrations, the page
templates) but not the demo world.

The fresh virtualenv takes its third-party dependencies from the test environment's
site-packages (a `.pth` line, read-only), so the test needs no package index; dsrflow
itself comes only from the wheel (that site-packages' editable-install hook is not run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests import sqlworld

pytestmark = pytest.mark.slow  # a wheel build and a fresh virtualenv

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DSRFLOW_CONFIG")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_serves_and_checks_data_maps_and_carries_no_demo(tmp_path: Path) -> None:
    # From a copy of the tracked files: a build in the checkout leaves build/ behind, and
    # setuptools packs whatever a stale build/lib still holds into the next wheel.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                  tmp_path / "dist", source], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("dsrflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"deployments/prefect.yaml", "deployments/automations.yaml",
            "dsrflow/templates/report.html", "dsrflow/templates/package_index.html",
            "dsrflow/ledger/migrations/env.py"} <= names
    assert not [n for n in names if n.startswith(("examples/", "tests/"))]

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index",
                      "-q", wheel], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]

    where = _run([venv / "bin/python", "-c", "import dsrflow; print(dsrflow.__file__)"],
                 cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    serve = _run([venv / "bin/dsrflow", "serve", "--help"], cwd=tmp_path)
    assert serve.returncode == 0 and "serve" in serve.stdout, serve.stderr[-2000:]

    datamap = tmp_path / "datamap.yaml"
    datamap.write_text(yaml.safe_dump(sqlworld.datamap_doc("sqlite:///users.sqlite")))
    checked = _run([venv / "bin/dsrflow", "datamap", "check", datamap], cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = sqlworld.datamap_doc("sqlite:///users.sqlite")
    broken["systems"]["db"]["tables"]["users"]["columns"]["email"]["action"] = "shred"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    refused = _run([venv / "bin/dsrflow", "datamap", "check", tmp_path / "broken.yaml"],
                   cwd=tmp_path)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "systems.db.tables.users.columns.email" in said, said

    demo = _run([venv / "bin/dsrflow", "demo", "--out", tmp_path / "demo"], cwd=tmp_path)
    assert demo.returncode != 0
    assert "the demo runs from a checkout" in demo.stdout + demo.stderr
