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


def test_an_embedding_stopped_between_parts_resumes_and_its_time_is_every_part(catalogue_scale, tmp_path, monkeypatch):
    """The embed phase's figure for a large catalogue: the seconds of every part, across the processes that
    embedded them; the report adds it to the SID build that then found the embeddings cached."""
    from argparse import Namespace

    from conftest import N_ITEMS, NAME, write_tiny
    from sentence_transformers import SentenceTransformer

    from recbole_diffgm.data.sid import embed as embed_module

    monkeypatch.chdir(tmp_path)
    write_tiny(tmp_path / "source")
    dataset_file = tmp_path / "tiny.yaml"
    dataset_file.write_text('field_separator: "\\t"\nload_col: {inter: [user_id, item_id, timestamp], '
                            "item: [item_id, title, price]}\n")
    for folder in ("properties", "benchmarks"):  # the script's relative paths, as from the repository's root
        (tmp_path / folder).symlink_to(Path(__file__).parents[1] / folder)
    monkeypatch.setattr(catalogue_scale, "BEAUTY", NAME)
    monkeypatch.setattr(catalogue_scale, "DATASET_FILE", str(dataset_file))
    size = N_ITEMS + 12
    catalogue_scale.pad_catalogue(tmp_path / "source", NAME, tmp_path / "padded", size)
    args = Namespace(size=size, data_dir=str(tmp_path / "padded"), sid_cache=str(tmp_path / "cache"))
    monkeypatch.setattr(embed_module, "EMBED_PART", 25)  # 60 texts: parts of 25, 25 and 10

    real_encode, calls = SentenceTransformer.encode, []

    def stopped_at_the_third_part(encoder, part, **kwargs):
        calls.append(len(part))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(encoder, part, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", stopped_at_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        catalogue_scale.measure_embed(args)
    assert SentenceTransformer.encode is stopped_at_the_third_part  # the phase's timer is taken off again
    monkeypatch.setattr(SentenceTransformer, "encode", real_encode)
    result = catalogue_scale.measure_embed(args)
    assert result["items"] == size and result["embedding_parts"] == 3 and result["embedding_s"] > 0
    again = catalogue_scale.measure_embed(args)  # cached: the same figure, nothing embedded
    assert again == result

    found = {(size, catalogue_scale.TEXTS, "embed", 1, "A"): {"result": {"embedding_s": 10.0}},
             (size, "opq", "sid", 1, "A"): {"result": {"items": size, "sid_build_s": 2.0, "embedding_cached": True,
                                                       "embedding_s": 0.1, "quantizer_s": 1.5}},
             (size, "opq", "sid", 1, "B"): {"result": {"items": size, "sid_build_s": 3.0, "embedding_cached": True,
                                                       "embedding_s": 0.1, "quantizer_s": 2.5}}}
    args.decode_batch = 128
    catalogue_scale.report(args, found, tmp_path / "scale.md")
    lines = [line for line in (tmp_path / "scale.md").read_text().splitlines() if line.startswith("| SIDs: opq")]
    # Machine A's SID build found the embedding A's embed phase made; machine B's is its own, never A's.
    assert len(lines) == 2 and "| 12.0 (10.0 + 1.5) | A |" in lines[0] and "| 3.0 (cached + 2.5) | B |" in lines[1]
