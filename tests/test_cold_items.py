"""The item cold-start protocol (``cold_items``, ``recbole_diffgm.data.cold_items``): held-out items that no model
trains on, the same items for every model, every evaluation case kept and reported as cold or in-set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import NAME
from recbole.data import data_preparation
from torch.nn import functional as F
from test_benchmark import read_table
from test_recipes import metrics_at, target_ranks

from recbole_diffgm import Config, InputError, create_dataset, get_model, load_data_and_model, run_recbole_diffgm
from recbole_diffgm.benchmark import run_benchmark
from recbole_diffgm.data.cold_items import cold_item_ids

COLD = {"cold_items": 0.25, "cold_items_seed": 7}
SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1}


def splits(tiny_config, model: str, **settings):
    config = Config(model, NAME, config_dict={**tiny_config, **(SASREC if model == "SASRec" else {}), **settings})
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)


def cold_tokens(dataset) -> set[str]:
    return {dataset.id2token(dataset.iid_field, int(item)) for item in dataset.cold_items.nonzero()[:, 0]}


@pytest.mark.parametrize(("model", "settings"), [("SASRec", {}), ("TextSASRec", {}), ("DiffGM", {}),
                                                 ("DiffGM", {"train_per_position": True})])
def test_no_training_batch_holds_a_cold_item(tiny_config, model, settings):
    dataset, (train, valid, test) = splits(tiny_config, model, **COLD, **settings)
    cold = dataset.cold_items
    assert 0 < cold.sum() < dataset.item_num - 1
    seen = torch.zeros_like(cold)
    for batch in train:
        for field in ("item_id", "item_id_list"):
            assert not cold[batch[field]].any(), field
            seen[batch[field]] = True
    assert seen[1:].sum() >= (~cold[1:]).sum() - 2  # every other item still trains (all but a first item or two)
    # Evaluation keeps every case: one per user in each split, some of them cold, cold items in histories too.
    _, (_, standard_valid, standard_test) = splits(tiny_config, model, **settings)
    for split, standard in ((valid, standard_valid), (test, standard_test)):
        assert torch.equal(split._dataset.inter_feat["item_id"], standard._dataset.inter_feat["item_id"])
        assert cold[split._dataset.inter_feat["item_id"]].any()
    assert cold[test._dataset.inter_feat["item_id_list"]].any()


def test_every_model_and_seed_holds_out_the_same_items(tiny_config):
    sasrec, _ = splits(tiny_config, "SASRec", **COLD)
    diffgm, _ = splits(tiny_config, "DiffGM", **COLD, seed=11)
    again, _ = splits(tiny_config, "DiffGM", **COLD, seed=11)
    other, _ = splits(tiny_config, "SASRec", cold_items=0.25, cold_items_seed=8)
    assert cold_tokens(sasrec) == cold_tokens(diffgm) == cold_tokens(again) != cold_tokens(other)
    assert len(cold_tokens(sasrec)) == round(0.25 * 48)


def test_the_draw_is_by_token_not_by_internal_id():
    tokens = np.array(["[PAD]", "b", "a", "d", "c"])
    ids = cold_item_ids(tokens, np.array([1, 2, 3, 4]), 0.5, seed=0)
    # Renumbering the items (the same tokens, other ids) draws the same tokens.
    renumbered = np.array(["[PAD]", "a", "b", "c", "d"])
    assert set(tokens[ids]) == set(renumbered[cold_item_ids(renumbered, np.array([1, 2, 3, 4]), 0.5, seed=0)])
    for bad in (1.5, "ten percent"):
        with pytest.raises(InputError, match=f"cold_items {bad!r}"):
            cold_item_ids(tokens, np.array([1, 2, 3, 4]), bad, seed=0)


def test_cold_items_get_sids_from_their_text_through_a_quantizer_fitted_without_them(tiny_config):
    dataset, _ = splits(tiny_config, "DiffGM", **COLD, sid_collision="reassign", n_digit=2)
    cold = cold_tokens(dataset)
    assert set(dataset.sid_fitted_tokens).isdisjoint(cold)
    assert len(dataset.sid_fitted_tokens) + len(cold) == dataset.item_num - 1
    codes = dataset.item_sid[1:]
    assert len(codes.unique(dim=0)) == len(codes)  # reassign: the cold items moved to free SIDs as well
    standard, _ = splits(tiny_config, "DiffGM", sid_collision="reassign", n_digit=2)
    assert not torch.equal(standard.item_sid, dataset.item_sid)  # fitted on every text, the codes differ


def test_the_in_set_and_cold_figures_are_those_of_their_cases_alone(tiny_config):
    result = run_recbole_diffgm("SASRec", NAME, config_dict={**tiny_config, **SASREC, **COLD, "epochs": 2,
                                                              "topk": [5, 10], "valid_metric": "NDCG@10"})
    by_case = result["test_result_by_case"]
    _, model, _, _, _, test = load_data_and_model(result["model_file"])
    ranks = target_ranks(model, test)
    cold = test._dataset.cold_items[test._dataset.inter_feat["item_id"]]
    assert by_case["cold"]["cases"] == int(cold.sum()) > 0 and by_case["in-set"]["cases"] == int((~cold).sum())
    for case, rows in (("cold", cold), ("in-set", ~cold)):
        expected = metrics_at(ranks[rows], (5, 10))
        assert {metric: by_case[case][metric] for metric in expected} == pytest.approx(expected, abs=5e-5)
    assert result["test_result"] == pytest.approx(metrics_at(ranks, (5, 10)), abs=5e-5)


def test_without_cold_items_the_protocol_is_recboles(tiny_config):
    dataset, _ = splits(tiny_config, "SASRec")
    assert getattr(dataset, "cold_items", None) is None
    assert type(dataset).__module__.startswith("recbole.")


def test_a_cold_start_benchmark_reports_cold_and_in_set_columns(tiny_config, tmp_path):
    results = tmp_path / "results"
    settings = {**tiny_config, **SASREC, **COLD, "epochs": 1, "topk": [5, 10], "valid_metric": "NDCG@10"}
    (row,) = run_benchmark(["SASRec"], NAME, config_dict=settings, results_dir=str(results))
    run = json.loads(next((results / f"{NAME}-runs").glob("*/run.json")).read_text())["result"]
    for case in ("cold", "in-set"):
        assert row[f"{case}_recall@10"] == pytest.approx(run["test_result_by_case"][case]["recall@10"])
    (line,) = read_table(results)
    assert float(line["cold_ndcg@10"]) == pytest.approx(run["test_result_by_case"]["cold"]["ndcg@10"], abs=1e-4)
    assert "`cold_` and `in-set_` columns" in (results / f"{NAME}.md").read_text()
    assert (results / f"{NAME}-cases.png").stat().st_size > 0  # in-set against cold Recall@10, a pair of bars per row
    (standard,) = run_benchmark(["SASRec"], NAME, config_dict={**settings, "cold_items": 0},
                                results_dir=str(tmp_path / "standard"))
    assert "cold_recall@10" not in standard and "cold_recall@10" not in read_table(tmp_path / "standard")[0]
    assert not (tmp_path / "standard" / f"{NAME}-cases.png").exists()


def _trained_model(tiny_config, model_name: str, **settings):
    config = Config(model_name, NAME, config_dict={**tiny_config, **COLD, "dropout": 0.0, "adaptor_dropout": 0.0,
                                                   **settings})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return get_model(model_name)(config, train._dataset), train


def test_the_catalogue_loss_ranks_the_training_catalogues_sids_alone(tiny_config):
    model, train = _trained_model(tiny_config, "DigitClassifier", catalogue_loss_weight=1.0, label_smoothing=0.1)
    cold = train._dataset.cold_items
    warm_sids = model.item_sid[1:][~cold[1:]].unique(dim=0)
    assert len(warm_sids) < len(model.distinct_sids) and torch.equal(model.trained_sids, warm_sids)
    targets = next(iter(train))[model.POS_ITEM_ID]
    first_log_probs = torch.randn(len(targets), model.n_digit, model.n_codes).log_softmax(-1)
    scores = first_log_probs.gather(2, warm_sids.T[None].expand(len(targets), -1, -1)).sum(1)  # [B, S]: brute force
    columns = (model.item_sid[targets][:, None] == warm_sids[None]).all(-1).int().argmax(1)
    expected = F.cross_entropy(scores, columns, label_smoothing=0.1)
    assert model.catalogue_loss(first_log_probs, targets).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("model_name", ["DigitClassifierHybrid", "TextSASRec"])
def test_a_cold_items_text_does_not_reach_the_training_loss(tiny_config, model_name):
    # No training row holds a cold item, so only a softmax over every item could read its text: it does not.
    model, train = _trained_model(tiny_config, model_name)
    model.eval()  # no dropout: two calls compute the same thing
    texts = model.item_text if model_name != "TextSASRec" else model.item_embedding.text
    cold = train._dataset.cold_items
    batch = next(iter(train))
    before = model.calculate_loss(batch)
    texts[cold] = torch.randn_like(texts[cold]) * 10
    assert model.calculate_loss(batch).item() == pytest.approx(before.item(), rel=1e-6)
    texts[~cold & (torch.arange(len(cold)) > 0)] += 1.0  # a warm item's text does
    assert model.calculate_loss(batch).item() != pytest.approx(before.item(), rel=1e-6)


def test_a_cold_item_sharing_a_warm_items_sid_still_leaves_the_dense_heads_softmax(tiny_config):
    # Under sid_collision: keep, items 1 and 2 of the tiny catalogue share a SID (one text): with one of them the
    # only cold item, every SID is a trained one, and the cold item must still be out of the dense head's loss.
    for seed in range(200):
        model, train = _trained_model(tiny_config, "DigitClassifierHybrid", sid_collision="keep", cold_items=0.02,
                                      cold_items_seed=seed)
        cold = train._dataset.cold_items
        if cold[1] != cold[2]:
            break
    assert cold[1] != cold[2] and cold.sum() == 1
    assert torch.equal(model.untrained_items, cold)
