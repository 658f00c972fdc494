"""One text per item, from the raw columns of the ``.item`` atomic file.

The text of an item is its configured fields in order, each rendered ``"<Label>: <value>."`` and joined
by single spaces, e.g. ``Title: Xtreme Brite Brightening Gel 1oz. Price: 19.99. Brand: Xtreme Brite.
Category: Beauty, Hair Care, Styling Products.`` (DiffGRM's item sentence). Raw strings are read from the
file rather than from RecBole's features: RecBole splits ``token_seq`` fields and replaces a missing
price with the mean price, neither of which belongs in the text. ``item_text_fields`` left to its default takes
the default fields the ``.item`` file has (``Config``); set by hand, every field it names must be a column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recbole_diffgm.data.amazon import clean_text
from recbole_diffgm.data.atomic_files import header_names, read_header
from recbole_diffgm.errors import InputError

CATEGORY_SEPARATOR = " | "


@dataclass(frozen=True)
class ItemTexts:
    texts: list[str]  # one per requested item, in the requested order
    fallback_items: int  # items with no usable field: their text is "Item: <item id>."
    missing_items: int  # requested items with no row in the .item file


def _render(field: str, value: str) -> str:
    value = clean_text(value)
    if field == "categories":
        value = ", ".join(name.rstrip(".") for name in value.split(CATEGORY_SEPARATOR) if name)
    return value.rstrip(".").strip()


def field_labels(fields) -> dict[str, str]:
    """``item_text_fields`` as field -> label: a dict as given; a list labels each field by its name
    (``sales_rank`` -> ``Sales rank``)."""
    if isinstance(fields, dict):
        return {str(field): str(label) for field, label in fields.items()}
    if isinstance(fields, (list, tuple)) and all(isinstance(field, str) for field in fields):
        return {field: field.replace("_", " ").capitalize() for field in fields}
    raise InputError(f"item_text_fields must be a list of .item columns or a dict of column: label, got {fields!r}")


def default_text_fields(labels: dict[str, str], item_file: Path, separator: str = "\t") -> dict[str, str]:
    """The default ``item_text_fields`` that ``item_file`` has, in their order: a dataset of one's own need not
    have every Amazon field. With none of them, all of them, so that the SID stage names the first missing
    column and the key to set (an item text of ids alone would make meaningless SIDs)."""
    columns = set(header_names(item_file, separator))
    present = {field: label for field, label in labels.items() if field in columns}
    return present or labels


def read_item_table(path: Path, item_field: str, fields: list[str], separator: str = "\t") -> pd.DataFrame:
    """The raw strings of ``fields`` (``item_text_fields``) per item token, checked against the file's header."""
    if not path.is_file():
        raise InputError(f"{path}: item file not found; the item text fields {fields} come from it")
    columns = {name.split(":")[0]: name for name in read_header(path, separator)}
    for field in [item_field, *fields]:
        if field not in columns:
            hint = ("set ITEM_ID_FIELD to the item id column" if field == item_field
                    else "set item_text_fields to the columns to embed")
            raise InputError(f"{path}: no column '{field}' (columns: {', '.join(columns)}); {hint}")
    table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                        usecols=[columns[field] for field in [item_field, *fields]], encoding="utf-8")
    table.columns = [name.split(":")[0] for name in table.columns]
    duplicated = table[item_field][table[item_field].duplicated()]
    if len(duplicated):
        raise InputError(f"{path}: item '{duplicated.iloc[0]}' appears in more than one row")
    return table.set_index(item_field)


def item_texts(item_file: Path, item_field: str, labels: dict[str, str], items: list[str],
               separator: str = "\t") -> ItemTexts:
    """The text of each item token in ``items``; ``labels`` maps field -> label, in text order."""
    table = read_item_table(item_file, item_field, list(labels), separator)
    rows = table.reindex(items, fill_value="")
    texts = [
        " ".join(f"{label}: {value}." for label, value in zip(labels.values(), values) if value)
        for values in zip(*(rows[field].map(lambda raw, f=field: _render(f, raw)) for field in labels))
    ]
    fallback = [i for i, text in enumerate(texts) if not text]
    for i in fallback:
        texts[i] = f"Item: {items[i]}."
    return ItemTexts(texts, len(fallback), int((~pd.Index(items).isin(table.index)).sum()))
