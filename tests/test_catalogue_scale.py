"""benchmarks/catalogue_scale.py: the padded catalogue keeps every user's data and adds items that no
interaction names, the same for the same seed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def catalogue_scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import catalogue_scale

    return catalogue_scale


def test_synthetic_items_join_the_catalogue_and_no_history(catalogue_scale, slice_root, tmp_path, monkeypatch):
    from recbole_diffgm import Config, create_dataset

    monkeypatch.chdir(tmp_path)
    real_items = len((slice_root / "beauty-slice" / "beauty-slice.item").read_text().splitlines()) - 1
    size = real_items + 150
    name = catalogue_scale.pad_catalogue(slice_root, "beauty-slice", tmp_path / "a", size)
    catalogue_scale.pad_catalogue(slice_root, "beauty-slice", tmp_path / "b", size)
    padded = (tmp_path / "a" / name / f"{name}.item").read_text()
    assert padded == (tmp_path / "b" / name / f"{name}.item").read_text()  # seeded
    assert padded.count("synthetic") == 150

    settings = {"data_path": str(tmp_path / "a"), "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
                "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]}}
    dataset = create_dataset(Config("SASRec", name, config_dict=settings))
    original = create_dataset(Config("SASRec", "beauty-slice", config_dict={**settings, "data_path": str(slice_root)}))
    assert dataset.item_num - 1 == size and dataset.inter_num == original.inter_num
    tokens = dataset.field2id_token["item_id"]
    used = set(tokens[dataset.inter_feat["item_id"].to_numpy()])
    assert not any(token.startswith("synthetic") for token in used)
    with pytest.raises(ValueError, match="fewer than"):
        catalogue_scale.pad_catalogue(slice_root, "beauty-slice", tmp_path / "c", real_items - 1)
