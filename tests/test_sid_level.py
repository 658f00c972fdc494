"""SID-level evaluation: ``eval_level: sid`` is the DiffGRM release's protocol, pinned on a hand-made case and
checked end to end against the model's own beams."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NAME, catalogue_beams
from recbole.data import data_preparation
from recbole.evaluator import Collector, Evaluator

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.evaluation import first_hit_list
from recbole_diffgm.utils import get_trainer

LEGAL = -1  # PrefixTrie.lookup's answer for a SID that no item has


def test_the_release_list_drops_unknown_sids_and_repeats_and_counts_the_first_hit(tiny_config):
    # Beams in score order, as catalogue SIDs (leaves); -1: a SID that no item has.
    leaves = torch.tensor([
        [7, LEGAL, 7, 3, 9, 4],   # target 3: the unknown SID and the repeat of 7 drop out, so 3 is 2nd
        [5, 5, 5, 5, 5, 2],       # target 2: four repeats of 5 drop out, so 2 is 2nd, not 6th
        [1, 2, 3, 4, 6, 8],       # target 9: not generated
        [LEGAL, LEGAL, 8, 8, 8, 8],  # target 8: first after the unknown SIDs; later repeats are no second hit
    ])
    scores, columns = first_hit_list(leaves, leaves >= 0, torch.arange(4), torch.tensor([3, 2, 9, 8]))
    assert columns.tolist() == [3, 5, 6, 2]  # the first kept beam with the target's SID; 6 = missed
    assert scores[0].tolist() == [6, -1, -1, 5, 4, 3, -2]

    # RecBole's own evaluator on these scores gives the release's numbers: first hit only, recall <= 1.
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "topk": [1, 2]})
    collector = Collector(config)
    collector.eval_batch_collect(scores, None, torch.arange(4), columns)
    result = Evaluator(config).evaluate(collector.get_data_struct())
    # Ranks 2, 2, none, 1.
    assert result["recall@1"] == pytest.approx(1 / 4) and result["recall@2"] == pytest.approx(3 / 4)
    assert result["ndcg@2"] == pytest.approx(round((2 / math.log2(3) + 1) / 4, 4))


def test_eval_level_sid_follows_the_release_on_the_models_own_beams(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 2, "eval_level": "sid",
                                                 "test_beam_size": 16, "topk": [1, 5]})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset).eval()
    trainer = get_trainer(config["MODEL_TYPE"], "DiffGM")(config, model)
    result = trainer.evaluate(valid, load_best_model=False)
    assert set(result) == {"sid_recall@1", "sid_recall@5", "sid_ndcg@1", "sid_ndcg@5"}

    # By hand, as the release: walk the beams by score, skip SIDs no item has and repeats, stop at k.
    ranks, repeats = [], 0
    for target_sid, beams in catalogue_beams(model, valid, 16):
        listed = list(dict.fromkeys(sid for sid, _ in beams))
        repeats += len(beams) - len(listed)
        ranks.append(listed.index(target_sid) + 1 if target_sid in listed else math.inf)
    ranks = torch.tensor(ranks)
    # CPD's beam merges the copies of a SID as it decodes, so the release's dropping of repeats (the test above,
    # on a hand-made list) has nothing left to drop here.
    assert repeats == 0
    assert 0 < result["sid_recall@5"] < 1
    assert result["sid_recall@5"] == pytest.approx(round((ranks <= 5).float().mean().item(), 4))
    assert result["sid_recall@1"] == pytest.approx(round((ranks <= 1).float().mean().item(), 4))
    ndcg = torch.where(ranks <= 5, 1 / torch.log2(ranks.clamp(max=1e9) + 1), 0.0).mean().item()
    assert result["sid_ndcg@5"] == pytest.approx(round(ndcg, 4))


@pytest.mark.parametrize("decoding", [{"decode_mode": "cpd"}, {"decode_mode": "one_pass"},
                                      {"decode_mode": "one_pass", "rerank_size": 12}])
def test_with_a_sid_per_item_the_sid_level_test_is_the_item_level_one(tiny_config, decoding):
    # What lets the benchmark take a row's SID-level figures from its item-level test instead of decoding again.
    from recbole_diffgm.benchmark import sid_level_repeats_item_level, sid_summary
    from recbole_diffgm.compat import load_checkpoint
    from recbole_diffgm.quick_start import evaluate_saved_model, run_recbole_diffgm

    settings = {**tiny_config, "n_digit": 2, "sid_collision": "reassign", "epochs": 2, "topk": [1, 5],
                "valid_beam_size": 12, "test_beam_size": 12, **decoding}
    result = run_recbole_diffgm("DiffGM", NAME, config_dict=settings)
    checkpoint = load_checkpoint(result["model_file"])
    sids = sid_summary(checkpoint["config"], checkpoint["other_parameter"]["sid_catalogue"]["codes"])
    assert sids["shared"] == 0
    assert sid_level_repeats_item_level(checkpoint["config"], sids)
    sid_level = evaluate_saved_model(result["model_file"], {"eval_level": "sid"})
    assert 0 < result["test_result"]["recall@5"] < 1
    assert dict(sid_level) == {f"sid_{metric}": value for metric, value in result["test_result"].items()}


def test_shared_sids_a_dense_head_or_a_short_list_keep_the_sid_level_test(tiny_config):
    from recbole_diffgm.benchmark import sid_level_repeats_item_level

    unique, shared = {"shared": 0.0}, {"shared": 0.25}
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "topk": [5, 10], "test_beam_size": 16})
    assert sid_level_repeats_item_level(config, unique) and not sid_level_repeats_item_level(config, shared)
    for changed in ({"dense_head": True}, {"dedup_strategy": "weighted"}, {"test_beam_size": 8},
                    {"decode_mode": "one_pass", "rerank_size": 8}):
        config = Config("DiffGM", NAME, config_dict={**tiny_config, "topk": [5, 10], "test_beam_size": 16, **changed})
        assert not sid_level_repeats_item_level(config, unique), changed
