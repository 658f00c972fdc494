"""Atomic files: which datasets exist (making the ones this plugin knows how to make), their checks, and the
columns a run loads from them."""

from __future__ import annotations

import csv
import difflib
import logging
from pathlib import Path

import pandas as pd
from recbole.utils import ModelType

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
        if "load_col" in resolved_defaults(config):
            logger.info(resolved_defaults(config)["load_col"])
        for suffix in ("inter", "item"):
            path = dataset_dir / f"{name}.{suffix}"
            if path.is_file():
                check_atomic_file(path, config["field_separator"], required_fields(config, suffix))
                check_float_fields(path, config["field_separator"])
        check_time_loaded(config, dataset_dir / f"{name}.inter")
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


# What to do about a missing column, by the config key that named it.
KEY_HINTS = {
    "load_col": "set load_col to the columns to load",
    "USER_ID_FIELD": "set USER_ID_FIELD to the user id column",
    "ITEM_ID_FIELD": "set ITEM_ID_FIELD to the item id column",
    "TIME_FIELD": "set TIME_FIELD to the time column",
}


def resolved_defaults(config) -> dict[str, str]:
    """Keys that ``Config`` fitted to the dataset's own files (key -> what it chose), none for other configs."""
    return getattr(config, "resolved_defaults", {})


def required_fields(config, suffix: str) -> dict[str, str]:
    """The columns a run reads from ``<dataset>.<suffix>``, each with the config key that names it: an explicit
    ``load_col`` entry's fields by ``load_col``; the id and time fields (RecBole's default or the one ``Config``
    fitted to the files) by ``USER_ID_FIELD`` / ``ITEM_ID_FIELD`` / ``TIME_FIELD``."""
    load_col = config["load_col"]
    ids = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]] if suffix == "inter" else [config["ITEM_ID_FIELD"]]
    fields = load_col.get(suffix, []) if load_col else ids
    fields = [] if fields == "*" else fields  # RecBole's "every column"
    if load_col and "load_col" not in resolved_defaults(config):
        return {field: "load_col" for field in fields}
    keys = {config[key]: key for key in ("TIME_FIELD", "USER_ID_FIELD", "ITEM_ID_FIELD") if config[key]}
    return {field: keys.get(field, "load_col") for field in fields}


def header_names(path: Path, separator: str = "\t") -> list[str]:
    """The column names of an atomic file's header, without their types. Undecodable bytes are replaced:
    ``check_atomic_file`` names them later, with their line."""
    with path.open(encoding="utf-8", errors="replace") as file:
        return [column.partition(":")[0] for column in file.readline().rstrip("\r\n").split(separator)]


def default_load_col(config, inter_file: Path, item_file: Path) -> dict[str, list[str]]:
    """RecBole's default ``load_col`` (user and item ids) fitted to a sequential run on these files: the
    ``.inter``'s ``TIME_FIELD`` when it has one (the order of each user's sequence), and the ``.item``'s ids when
    there is one (its items are the catalogue, as with the shipped datasets). Without a time column the
    sequences follow the file order (``FileOrderSequentialDataset``)."""
    separator = config["field_separator"]
    inter = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
    if config["TIME_FIELD"] and config["TIME_FIELD"] in header_names(inter_file, separator):
        inter.append(config["TIME_FIELD"])
    return {"inter": inter, **({"item": [config["ITEM_ID_FIELD"]]} if item_file.is_file() else {})}


def check_time_loaded(config, inter_file: Path) -> None:
    """Raise if a sequential run's explicit ``load_col`` leaves out the ``.inter``'s time column: RecBole would
    fail in its split with ``[timestamp] is not exist in interaction``."""
    load_col, time = config["load_col"], config["TIME_FIELD"]
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or not load_col or not time or config["benchmark_filename"]:
        return
    inter = load_col.get("inter")
    if inter and inter != "*" and time not in inter and time in header_names(inter_file, config["field_separator"]):
        raise InputError(f"{inter_file}: load_col leaves out '{time}' (TIME_FIELD), which orders each user's "
                         "sequence; add it to load_col's inter columns")


def orders_by_file(config) -> bool:
    """Whether a sequential run takes each user's order from the file: its ``.inter`` has no ``TIME_FIELD``."""
    inter_file = Path(config["data_path"]) / f"{config['dataset']}.inter"
    time = config["TIME_FIELD"]
    return (config["MODEL_TYPE"] == ModelType.SEQUENTIAL and not config["benchmark_filename"] and bool(time)
            and inter_file.is_file() and time not in header_names(inter_file, config["field_separator"]))


def check_atomic_file(path: Path, separator: str, required: dict[str, str]) -> None:
    """Raise, naming the file, line and column, if ``path`` is not a well-formed atomic file with ``required``
    columns (column -> the config key that names it, for the fix): UTF-8, a header of distinct ``name:type``
    columns, and as many fields on every line.

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
    for field, key in required.items():
        if field not in names:
            close = difflib.get_close_matches(field, names, n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"{path}: no column '{field}' (columns: {', '.join(header)}); {KEY_HINTS[key]}{guess}")
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
