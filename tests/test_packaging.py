"""Packaging: a source build without Highway says what to install, at configure time; the
metadata declares what the README promises; the license is there."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_configure_without_highway_names_the_packages_to_install(tmp_path):
    # CMAKE_DISABLE_FIND_PACKAGE_hwy makes find_package(hwy) fail as on a machine without it.
    args = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DTERNLM_BUILD_PYTHON=OFF",
            "-DCMAKE_DISABLE_FIND_PACKAGE_hwy=TRUE"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    text = " ".join((out.stdout + out.stderr).split())        # CMake rewraps long lines
    assert out.returncode != 0, text
    assert "ternlm needs Google Highway" in text
    for hint in ("apt-get install libhwy-dev", "dnf install highway-devel", "brew install highway",
                 "conda install -c conda-forge highway"):
        assert hint in text, hint
    assert "Could not find a package configuration file" not in text     # CMake's own wording


def test_pyproject_declares_python_versions_license_and_no_in_tree_build_dir():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert project["requires-python"] == ">=3.10"
    classifiers = set(project["classifiers"])
    # classifiers name the versions the suite has run on; the README says which others install
    versions = {c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {"3.11", "3.12"}, versions
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "3.11" in readme and "3.12" in readme and "3.10 and 3.13" in readme
    assert {"License :: OSI Approved :: MIT License", "Operating System :: POSIX :: Linux",
            "Operating System :: MacOS", "Programming Language :: C++"} <= classifiers
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert project["license"] == {"text": "MIT"}
    # A build-dir inside the tree would make `pip install .` fail on a read-only checkout.
    assert "build-dir" not in meta["tool"]["scikit-build"]


def test_license_file_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 the ternlm authors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_readme_starts_with_install():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_section = readme.split("\n## ", 2)[1]
    assert first_section.startswith("Install")
    for needle in ("pip install", "libhwy-dev", "3.10", "3.13", "aarch64", "make demo", "make test"):
        assert needle in first_section, needle


def test_wheel_smoke_script_is_wired_into_ci():
    assert "make test-wheel" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "tests/wheel_smoke.sh" in makefile and "auditwheel repair" in makefile
