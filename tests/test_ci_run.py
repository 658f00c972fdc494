""".ci/run: a PYTHON313 that is not a Python 3.13 stops CI with a message before anything runs; unset, it does not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CI_RUN = Path(__file__).parents[1] / ".ci" / "run"


def executable(path: Path, script: str) -> Path:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def run_ci(tmp_path: Path, python313: str | None) -> subprocess.CompletedProcess:
    """``.ci/run`` with ``PYTHON313`` (unset: ``None``) and a ``pip`` that exits 97: CI's first command."""
    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "pip", "exit 97")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON313", "CI_SKIP_PY313")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    if python313 is not None:
        env["PYTHON313"] = python313
    return subprocess.run(["bash", str(CI_RUN)], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("interpreter", ["missing", "a folder", "Python 3.12"])
def test_a_python313_that_is_no_python_3_13_stops_ci_before_its_first_command(tmp_path, interpreter):
    python313 = {"missing": tmp_path / "python3.13", "a folder": tmp_path,
                 "Python 3.12": executable(tmp_path / "python", '[ "$1" = --version ] && echo "Python 3.12.9"; exit 1')}
    result = run_ci(tmp_path, str(python313[interpreter]))
    assert result.returncode == 2, result.stderr
    assert f"PYTHON313={python313[interpreter]} is not an executable Python 3.13" in result.stderr
    assert ("Python 3.12.9" in result.stderr) == (interpreter == "Python 3.12")


def test_without_python313_ci_goes_on_to_its_first_command(tmp_path):
    assert run_ci(tmp_path, None).returncode == 97  # whether this machine has a Python 3.13 or not
