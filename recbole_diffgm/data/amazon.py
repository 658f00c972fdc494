"""Amazon Review 2014 5-core categories: raw files -> RecBole atomic files.

Raw files, as published by McAuley et al.:

- ``reviews_<Category>_5.json.gz``: one JSON object per line (``reviewerID``, ``asin``, ``unixReviewTime``, ...);
- ``meta_<Category>.json.gz``: one Python dict literal per line (``asin``, ``title``, ``brand``,
  ``categories`` (a list of category paths), ``price``, ``salesRank`` ({category: rank}), ...).

The output follows ``dataset/README.md``: ``<name>.inter`` with ``user_id item_id timestamp``, users in order
of first appearance, each user's rows sorted by (timestamp, ASIN); ``<name>.item`` for exactly the reviewed
items, with HTML entities unescaped, whitespace collapsed to single spaces, ``"`` written as ``''`` and
category paths flattened (first occurrence kept) and joined by `` | ``.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import re
import shutil
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from recbole_diffgm.errors import InputError
from recbole_diffgm.files import replaced_atomically

logger = logging.getLogger(__name__)

CATEGORIES = {
    "amazon-beauty": "Beauty",
    "amazon-sports-outdoors": "Sports_and_Outdoors",
    "amazon-toys-games": "Toys_and_Games",
    "amazon-cds-vinyl": "CDs_and_Vinyl",
}
K_CORE = 5
INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
ITEM_HEADER = (
    "item_id:token",
    "title:token_seq",
    "brand:token",
    "categories:token_seq",
    "price:float",
    "sales_type:token",
    "sales_rank:float",
)
_WHITESPACE = re.compile(r"\s+")


def raw_file_names(category: str) -> tuple[str, str]:
    """The two raw files of ``category`` (e.g. ``Beauty``): reviews, metadata."""
    return f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"


def clean_text(value) -> str:
    """One cleaned, single-line, tab-free text value (see module docstring)."""
    text = _WHITESPACE.sub(" ", html.unescape(str(value))).strip()
    # pandas (and so RecBole) reads a field that starts with '"' as a quoted field and merges rows.
    return text.replace('"', "''")


def _flatten_categories(paths) -> str:
    names = [clean_text(name) for path in paths or [] for name in path]
    return " | ".join(dict.fromkeys(name for name in names if name))


def _read_lines(path: Path, parse, what: str):
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse(line)
            except (ValueError, SyntaxError) as error:
                raise InputError(f"{path}, line {number}: not a {what} ({error})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}, line {number}: not a {what} (got {type(record).__name__})")
            yield number, record


def read_reviews(path: Path) -> list[tuple[str, str, int]]:
    """(user, item, unix time) per review, in file order."""
    reviews = []
    for number, record in _read_lines(path, json.loads, "JSON object"):
        try:
            reviews.append((str(record["reviewerID"]), str(record["asin"]), int(record["unixReviewTime"])))
        except KeyError as missing:
            raise InputError(f"{path}, line {number}: review has no field {missing}") from None
        except (TypeError, ValueError):
            raise InputError(
                f"{path}, line {number}: unixReviewTime {record['unixReviewTime']!r} is not an integer"
            ) from None
    if not reviews:
        raise InputError(f"{path}: no reviews")
    return reviews


def read_metadata(path: Path, items: set[str]) -> dict[str, dict]:
    """Metadata records of ``items``, by ASIN (the file covers the whole category)."""
    return {
        record["asin"]: record
        for _, record in _read_lines(path, ast.literal_eval, "Python dict literal")
        if record.get("asin") in items
    }


def check_k_core(reviews: list[tuple[str, str, int]], path: Path, k: int = K_CORE) -> None:
    """Raise unless every user and every item has at least ``k`` reviews."""
    users = Counter(user for user, _, _ in reviews)
    items = Counter(item for _, item, _ in reviews)
    sparse_users = sum(count < k for count in users.values())
    sparse_items = sum(count < k for count in items.values())
    if sparse_users or sparse_items:
        raise InputError(
            f"{path} is not {k}-core: {sparse_users} of {len(users)} users and {sparse_items} of "
            f"{len(items)} items have fewer than {k} reviews; use the '_{k}' review file"
        )


def _item_row(asin: str, record: dict) -> tuple[str, ...]:
    price = record.get("price")
    sales_type, sales_rank = next(iter((record.get("salesRank") or {}).items()), ("", None))
    return (
        asin,
        clean_text(record.get("title") or ""),
        clean_text(record.get("brand") or ""),
        _flatten_categories(record.get("categories")),
        "" if price is None else str(float(price)),
        clean_text(sales_type),
        "" if sales_rank is None else str(float(sales_rank)),
    )


def write_atomic_file(path: Path, header: tuple[str, ...], rows) -> None:
    """Write a tab-separated atomic file through a temporary file, so a partial file never appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as partial, partial.open("w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(header) + "\n")
        out.writelines("\t".join(row) + "\n" for row in rows)


@dataclass(frozen=True)
class ConversionStats:
    users: int
    items: int
    interactions: int
    items_without_metadata: int


def convert(reviews_path: Path, meta_path: Path, out_dir: Path, name: str) -> ConversionStats:
    """Convert one category's raw files into ``out_dir/<name>.inter`` and ``out_dir/<name>.item``."""
    reviews = read_reviews(Path(reviews_path))
    check_k_core(reviews, Path(reviews_path))
    user_rank = {user: rank for rank, user in enumerate(dict.fromkeys(user for user, _, _ in reviews))}
    reviews.sort(key=lambda review: (user_rank[review[0]], review[2], review[1]))
    items = sorted({item for _, item, _ in reviews})
    metadata = read_metadata(Path(meta_path), set(items))
    missing = [item for item in items if item not in metadata]
    if missing:
        logger.warning(f"{meta_path}: no metadata for {len(missing)} of {len(items)} items; their text fields stay empty")

    out_dir = Path(out_dir)
    write_atomic_file(out_dir / f"{name}.inter", INTER_HEADER,
                      ((user, item, str(time)) for user, item, time in reviews))
    write_atomic_file(out_dir / f"{name}.item", ITEM_HEADER,
                      (_item_row(item, metadata.get(item, {})) for item in items))
    stats = ConversionStats(len(user_rank), len(items), len(reviews), len(missing))
    logger.info(f"{name}: wrote {stats.users:,} users, {stats.items:,} items, "
                f"{stats.interactions:,} interactions to {out_dir}")
    return stats


def download(url: str, path: Path, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``path`` through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response, replaced_atomically(path) as partial:
        with partial.open("wb") as out:
            shutil.copyfileobj(response, out)


def prepare(name: str, dataset_dir: Path, raw_url: str) -> ConversionStats:
    """Make the atomic files of Amazon dataset ``name`` in ``dataset_dir``.

    The raw files are read from ``dataset_dir/raw/``; missing ones are downloaded from ``raw_url`` first.
    """
    category = CATEGORIES[name]
    raw_dir = Path(dataset_dir) / "raw"
    paths = [raw_dir / file_name for file_name in raw_file_names(category)]
    for path in paths:
        if path.is_file():
            continue
        url = raw_url.rstrip("/") + "/" + path.name
        logger.info(f"downloading {url}")
        try:
            download(url, path)
        except OSError as error:  # URLError and socket timeouts are OSErrors
            raise InputError(
                f"dataset '{name}' is not in {dataset_dir} and {url} could not be downloaded ({error}); "
                f"put {paths[0].name} and {paths[1].name} into {raw_dir}/ and run again"
            ) from None
    return convert(paths[0], paths[1], Path(dataset_dir), name)
