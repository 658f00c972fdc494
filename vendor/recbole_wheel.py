"""Rebuild ``vendor/recbole-1.2.1+rayuncapped-py3-none-any.whl``: PyPI's recbole 1.2.1 wheel, one metadata line changed.

RecBole 1.2.1 requires ``ray>=1.13.0,<=2.6.3``, and ray 2.6.3 has no wheel past Python 3.11, so pip cannot install
recbole 1.2.1 on Python 3.12 or 3.13 at all; pip has no way to override a dependency's requirement. On Python 3.12+
``setup.py`` therefore depends on this wheel (a direct reference to the file in the checkout) instead of PyPI's:

* every file of the ``recbole`` package is PyPI's, byte for byte (``tests/test_python_versions.py`` checks the
  hashes against PyPI's RECORD, kept in the wheel);
* ``Requires-Dist: ray (<=2.6.3,>=1.13.0)`` becomes ``Requires-Dist: ray (>=1.13.0)``: this plugin's ``setup.py``
  then pins the Ray that the Python has wheels for;
* the version is ``1.2.1+rayuncapped``, so ``pip list`` shows that the metadata is not PyPI's.

On Python 3.10/3.11 nothing changes: ``recbole==1.2.1`` from PyPI with ``ray[tune]==2.6.3``.

Usage: ``python vendor/recbole_wheel.py [PYPI_WHEEL]`` (without a path, ``pip download`` fetches it); writes the wheel
beside this script. The output is deterministic: rebuilding from PyPI's file gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PYPI_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"  # recbole-1.2.1-py3-none-any.whl
OLD_VERSION, NEW_VERSION = "1.2.1", "1.2.1+rayuncapped"
OLD_RAY, NEW_RAY = "Requires-Dist: ray (<=2.6.3,>=1.13.0)", "Requires-Dist: ray (>=1.13.0)"
WHEEL = Path(__file__).resolve().parent / f"recbole-{NEW_VERSION}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def rebuild(pypi_wheel: Path, out: Path = WHEEL) -> Path:
    digest = hashlib.sha256(pypi_wheel.read_bytes()).hexdigest()
    if digest != PYPI_SHA256:
        raise SystemExit(f"{pypi_wheel}: sha256 {digest}, not PyPI's recbole 1.2.1 wheel ({PYPI_SHA256})")
    old_info, new_info = f"recbole-{OLD_VERSION}.dist-info/", f"recbole-{NEW_VERSION}.dist-info/"
    with zipfile.ZipFile(pypi_wheel) as source:
        members = {info.filename: (info, source.read(info)) for info in source.infolist()}
    metadata = members[old_info + "METADATA"][1].decode()
    for old, new in ((f"Version: {OLD_VERSION}\n", f"Version: {NEW_VERSION}\n"), (OLD_RAY + "\n", NEW_RAY + "\n")):
        if metadata.count(old) != 1:
            raise SystemExit(f"unexpected METADATA: no single line '{old.strip()}'")
        metadata = metadata.replace(old, new)
    record = []
    for line in members[old_info + "RECORD"][1].decode().splitlines():
        path, _, rest = line.partition(",")
        if path == old_info + "METADATA":
            rest = f"{_record_hash(metadata.encode())},{len(metadata.encode())}"
        record.append(path.replace(old_info, new_info, 1) + "," + rest)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name, (info, data) in members.items():
            if name == old_info + "METADATA":
                data = metadata.encode()
            elif name == old_info + "RECORD":
                data = ("\n".join(record) + "\n").encode()
            copy = zipfile.ZipInfo(name.replace(old_info, new_info, 1), date_time=info.date_time)
            copy.external_attr, copy.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
            target.writestr(copy, data)
    return out


def main(argv: list[str]) -> None:
    if argv:
        print(rebuild(Path(argv[0])))
        return
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", folder,
                        "recbole==1.2.1"], check=True)
        print(rebuild(Path(folder) / "recbole-1.2.1-py3-none-any.whl"))


if __name__ == "__main__":
    main(sys.argv[1:])
