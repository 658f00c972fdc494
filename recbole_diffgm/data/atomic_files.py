"""Which datasets exist, and making the ones this plugin knows how to make."""

from __future__ import annotations

import csv
import difflib
import logging
from pathlib import Path

import pandas as pd

from recbole_diffgm.data import amazon
from recbole_diffgm.errors import InputError

logger = logging.getLogger(__name__)


def local_datasets(data_root: Path) -> list[str]:
    """Datasets under ``data_root``: folders ``<name>/`` holding ``<name>.inter``."""
    if not data_root.is_dir():
        return []
    return sorted(path.parent.name for path in data_root.glob("*/*.inter") if path.stem == path.parent.name)


def ensure_dataset(config) -> None:
    """Check that the atomic files of ``config['dataset']`` exist; make a known Amazon category if not."""
    name = config["dataset"]
    dataset_dir = Path(config["data_path"])  # RecBole's Config has already appended the dataset name
    if not (dataset_dir / f"{name}.inter").is_file() and name in amazon.CATEGORIES:
        amazon.prepare(name, dataset_dir, config["amazon_raw_url"])
    if (dataset_dir / f"{name}.inter").is_file():
        load_col = config["load_col"] or {}
        for suffix in ("inter", "item"):
            path = dataset_dir / f"{name}.{suffix}"
            if path.is_file():
                check_atomic_file(path, config["field_separator"], required_fields(config, suffix))
                check_float_fields(path, config["field_separator"])
        if config["filter_inter_by_user_or_item"] and (not load_col or "item" in load_col):
            report_items_without_rows(dataset_dir, name, config["ITEM_ID_FIELD"], config["field_separator"])
        return
    available = local_datasets(dataset_dir.parent)
    raise InputError(
        f"unknown dataset '{name}': no file {dataset_dir / (name + '.inter')}; "
        f"available in {dataset_dir.parent}: {', '.join(available) or 'none'}; "
        f"made on first use from the Amazon 2014 raw files: {', '.join(amazon.CATEGORIES)}"
    )


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def required_fields(config, suffix: str) -> list[str]:
    """The columns a run reads from ``<dataset>.<suffix>``: its ``load_col`` entry, or the id fields."""
    load_col = config["load_col"]
    if load_col:
        return list(load_col.get(suffix, []))
    return [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]] if suffix == "inter" else [config["ITEM_ID_FIELD"]]


def check_atomic_file(path: Path, separator: str, required: list[str]) -> None:
    """Raise, naming the file, line and column, if ``path`` is not a well-formed atomic file with ``required``
    columns: UTF-8, a header of distinct ``name:type`` columns, and as many fields on every line.

    RecBole would fail later with a pandas or key error that names neither the file nor the line.
    """
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path}: empty file; an atomic file starts with a header of name:type columns")
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{path}, line {number}: not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                             f"{error.start + 1}); save the file as UTF-8") from None
    header = lines[0].decode("utf-8").rstrip("\r").split(separator)
    for column in header:
        name, _, kind = column.partition(":")
        if not kind:
            raise InputError(f"{path}: header column '{column}' has no type; write it as name:type "
                             f"({', '.join(ATOMIC_TYPES)})")
        if kind not in ATOMIC_TYPES:
            raise InputError(f"{path}: header column '{column}' has an unknown type '{kind}'; use one of "
                             f"{', '.join(ATOMIC_TYPES)}")
        if sum(other.partition(":")[0] == name for other in header) > 1:
            raise InputError(f"{path}: column '{name}' appears more than once in the header")
    names = [column.partition(":")[0] for column in header]
    for field in required:
        if field not in names:
            close = difflib.get_close_matches(field, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"{path}: no column '{field}' (columns: {', '.join(header)}){hint}")
    separator_bytes = separator.encode()
    for number, raw in enumerate(lines[1:], start=2):
        fields = raw.rstrip(b"\r").count(separator_bytes) + 1
        if raw.strip() and fields != len(header):
            raise InputError(f"{path}, line {number}: {fields} fields, but the header has {len(header)}")


def read_header(path: Path, separator: str = "\t") -> list[str]:
    """The ``name:type`` columns of an atomic file."""
    with path.open(encoding="utf-8") as file:
        return file.readline().rstrip("\n").split(separator)


def check_float_fields(path: Path, separator: str) -> None:
    """Raise, naming the line, field and value, if a ``:float`` column holds something that is not a number.

    RecBole would only say "Unable to convert column price:float to type float64".
    """
    if not path.is_file():
        return
    float_columns = [column for column in read_header(path, separator) if column.endswith(":float")]
    if not float_columns:
        return
    table = pd.read_csv(path, sep=separator, usecols=float_columns, dtype=str, keep_default_na=False,
                        quoting=csv.QUOTE_NONE, encoding="utf-8")
    for column in float_columns:
        values = table[column].str.strip()
        bad = values.ne("") & pd.to_numeric(values, errors="coerce").isna()
        if bad.any():
            row = int(bad.idxmax())
            raise InputError(
                f"{path}, line {row + 2}: field '{column}' must be a number, got '{table[column].iloc[row]}'"
            )


def _read_column(path: Path, field: str, separator: str) -> pd.Series:
    header = read_header(path, separator)
    column = next((name for name in header if name.split(":")[0] == field), None)
    if column is None:
        raise InputError(f"{path}: no column '{field}' (columns: {', '.join(header)})")
    return pd.read_csv(path, sep=separator, usecols=[column], dtype=str, keep_default_na=False,
                       quoting=csv.QUOTE_NONE, encoding="utf-8")[column]


def report_items_without_rows(dataset_dir: Path, name: str, item_field: str, separator: str) -> None:
    """Warn about interactions whose item has no ``.item`` row: RecBole silently drops them."""
    item_file = dataset_dir / f"{name}.item"
    if not item_file.is_file():
        return
    interacted = _read_column(dataset_dir / f"{name}.inter", item_field, separator)
    missing = ~interacted.isin(set(_read_column(item_file, item_field, separator)))
    if missing.any():
        logger.warning(
            f"{interacted[missing].nunique():,} items of {name}.inter have no row in {item_file}; RecBole drops "
            f"their {int(missing.sum()):,} interactions (filter_inter_by_user_or_item)"
        )
