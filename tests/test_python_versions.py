"""Python 3.10 to 3.13: what setup.py installs on each, the vendored RecBole wheel, and stdlib removals.

RecBole 1.2.1 caps Ray at 2.6.3, which has no wheel past Python 3.11. On 3.12+ ``setup.py`` depends on
``vendor/recbole-1.2.1+rayuncapped-py3-none-any.whl`` (PyPI's wheel with that cap lifted, rebuilt by
``vendor/recbole_wheel.py``) and on a newer Ray; 3.10/3.11 keep ``recbole==1.2.1`` and ``ray[tune]==2.6.3``.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).parents[1]
WHEEL = ROOT / "vendor" / "recbole-1.2.1+rayuncapped-py3-none-any.whl"
INFO = "recbole-1.2.1+rayuncapped.dist-info/"


def setup_arguments() -> dict:
    """The keyword arguments ``setup.py`` passes to ``setup()``, read without building anything."""
    import setuptools

    with mock.patch.object(setuptools, "setup") as setup:
        code = compile((ROOT / "setup.py").read_text(), str(ROOT / "setup.py"), "exec")
        exec(code, {"__file__": str(ROOT / "setup.py"), "__name__": "__main__"})  # noqa: S102  (our own setup.py)
    return setup.call_args.kwargs


def requirements_on(python: str) -> dict[str, Requirement]:
    environment = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    chosen = {}
    for text in setup_arguments()["install_requires"]:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            assert requirement.name not in chosen, f"{requirement.name} twice for Python {python}"
            chosen[requirement.name] = requirement
    return chosen


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_python_3_10_to_3_13_are_accepted():
    accepted = SpecifierSet(setup_arguments()["python_requires"])
    assert all(f"{version}.0" in accepted for version in ("3.10", "3.11", "3.12", "3.13"))
    assert "3.14.0" not in accepted  # not tested there


@pytest.mark.parametrize("python", ["3.10", "3.11"])
def test_up_to_python_3_11_the_pins_are_pypis_recbole_and_ray_2_6_3(python):
    chosen = requirements_on(python)
    assert str(chosen["recbole"].specifier) == "==1.2.1" and chosen["recbole"].url is None
    assert str(chosen["ray"].specifier) == "==2.6.3" and chosen["ray"].extras == {"tune"}


@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_from_python_3_12_recbole_is_the_vendored_wheel_and_ray_has_wheels(python):
    chosen = requirements_on(python)
    assert chosen["recbole"].url == WHEEL.resolve().as_uri() and WHEEL.is_file()
    ray = chosen["ray"]
    assert ray.extras == {"tune"} and str(ray.specifier).startswith("==")
    assert not ray.specifier.contains("2.6.3")
    # every other pin is the same on every Python
    assert {name: str(req) for name, req in chosen.items() if name not in ("recbole", "ray")} == {
        name: str(req) for name, req in requirements_on("3.11").items() if name not in ("recbole", "ray")}


def test_the_installed_ray_is_the_one_setup_py_pins_for_this_python():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert requirements_on(python)["ray"].specifier.contains(importlib.metadata.version("ray"))
    # and RecBole's own ray requirement holds (pip check's view)
    ray_requirements = [Requirement(text) for text in importlib.metadata.requires("recbole")
                        if Requirement(text).name == "ray"]
    assert ray_requirements and all(req.specifier.contains(importlib.metadata.version("ray")) for req in ray_requirements)


def test_the_vendored_wheel_is_pypis_recbole_with_only_the_ray_cap_lifted():
    with zipfile.ZipFile(WHEEL) as wheel:
        names = wheel.namelist()
        record = [line.split(",") for line in wheel.read(INFO + "RECORD").decode().splitlines()]
        metadata = wheel.read(INFO + "METADATA").decode()
        # every file is the one its RECORD names
        for path, digest, size in record:
            if path != INFO + "RECORD":
                data = wheel.read(path)
                assert (record_hash(data), str(len(data))) == (digest, size), path
    assert sorted(path for path, _, _ in record) == sorted(names)
    assert "Version: 1.2.1+rayuncapped\n" in metadata
    assert "Requires-Dist: ray (>=1.13.0)\n" in metadata and "2.6.3" not in metadata

    installed = importlib.metadata.distribution("recbole")
    hashes = {str(file): f"{file.hash.mode}={file.hash.value}" for file in installed.files if file.hash}
    package_files = [(path, digest) for path, digest, _ in record if path.startswith("recbole/")]
    assert len(package_files) > 200
    # the installed recbole (PyPI's on 3.10/3.11, this wheel on 3.12+) has the same bytes in every file
    assert [(path, hashes.get(path)) for path, _ in package_files] == package_files
    if installed.version == "1.2.1":  # PyPI's: its metadata differs in exactly the version and the ray line
        pypi = installed.read_text("METADATA").splitlines()
        ours = metadata.splitlines()
        changed = [(a, b) for a, b in zip(pypi, ours) if a != b]
        assert len(pypi) == len(ours) and changed == [
            ("Version: 1.2.1", "Version: 1.2.1+rayuncapped"),
            ("Requires-Dist: ray (<=2.6.3,>=1.13.0)", "Requires-Dist: ray (>=1.13.0)")]
    else:
        assert installed.version == "1.2.1+rayuncapped"
        assert installed.read_text("METADATA") == metadata


REMOVED_FROM_THE_STDLIB = {  # 3.12 (PEP 632, 594 in part) and 3.13 (PEP 594)
    "distutils", "imp", "asynchat", "asyncore", "smtpd", "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt",
    "imghdr", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib",
    "uu", "xdrlib", "lib2to3",
}


def imported_modules(folder: Path) -> dict[str, str]:
    found = {}
    for path in folder.rglob("*.py"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes in the scanned packages' docstrings
                tree = ast.parse(path.read_bytes())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                found.setdefault(name.split(".")[0], str(path))
    return found


@pytest.mark.parametrize("package", ["recbole_diffgm", "recbole", "thop"])
def test_no_module_removed_from_the_stdlib_is_missing(package):
    # thop (RecBole's get_flops, run by every training) imports distutils: on 3.12+ setuptools provides it.
    folder = Path(importlib.util.find_spec(package).origin).parent
    used = {name: path for name, path in imported_modules(folder).items() if name in REMOVED_FROM_THE_STDLIB}
    missing = {name: path for name, path in used.items()
               if subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, check=False).returncode}
    assert not missing, missing


def test_thop_imports_as_recbole_get_flops_does():
    code = "from thop.profile import register_hooks; from thop.vision.basic_hooks import count_parameters; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
