"""Files replaced whole: a reader sees the old file or the new one, never a half-written one.

The package's bottom layer (the standard library only, nothing of the package): checkpoints, resume states, SID and
embedding caches, datasets, learning curves and benchmark records all go through ``replaced_atomically``, so that
a process killed mid-write leaves the previous file as it was. The temporary file sits in the target's folder
(``os.replace`` is atomic only within one file system) and is named ``.<name>.<random>.partial``: hidden, ignored
by git under ``results/`` (``.gitignore``), and distinct per writer, so that two processes writing the same file
never write into one temporary file.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed onto ``path`` when the block succeeds,
    removed when it raises (``path`` is then left as it was). The folder must exist."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomically(text: str, path: str | Path) -> None:
    """``text`` as ``path``'s whole content (UTF-8)."""
    with replaced_atomically(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json_atomically(data, path: str | Path) -> None:
    """``data`` as JSON (indented by one, keys sorted: the records the package keeps, diffable between runs)."""
    write_text_atomically(json.dumps(data, indent=1, sort_keys=True), path)


def write_csv_atomically(rows: list[dict], path: str | Path) -> None:
    """``rows`` as a CSV whose columns are every key of any row, in the order they first appear (a learning curve
    gains its metrics' columns at its first validation)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with replaced_atomically(path) as partial, partial.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
