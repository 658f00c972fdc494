"""Shared fixtures: a small real slice of amazon-beauty and fast training settings."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from recbole_diffgm.config import DATASET_DIR

BEAUTY = "amazon-beauty"
TEST_DATA = Path(__file__).parent / "data"
SCRIPT = Path(__file__).parents[1] / "run_recbole_diffgm.py"


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as strings, exactly as written (no quoting, empty cells kept)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)


def write_slice(users: int, out_root: Path, name: str = "beauty-slice") -> Path:
    """The first ``users`` users of amazon-beauty, all their rows, and the rows of their items."""
    inter = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.inter")
    item = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.item")
    kept_users = inter["user_id:token"].drop_duplicates().iloc[:users]
    inter = inter[inter["user_id:token"].isin(kept_users)]
    item = item[item["item_id:token"].isin(inter["item_id:token"])]
    folder = out_root / name
    folder.mkdir(parents=True)
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    item.to_csv(folder / f"{name}.item", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return out_root


@pytest.fixture(scope="session")
def slice_root(tmp_path_factory) -> Path:
    """A data_path holding ``beauty-slice``: 300 real users of amazon-beauty."""
    return write_slice(300, tmp_path_factory.mktemp("data"))


@pytest.fixture
def fast_config(slice_root, tmp_path, monkeypatch) -> dict:
    """A config_dict that trains a small SASRec on the slice in seconds, writing only under tmp_path."""
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ into the working directory
    return {
        "data_path": str(slice_root),
        "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]},
        "field_separator": "\t",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "epochs": 2,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "show_progress": False,
        "state": "WARNING",
    }
