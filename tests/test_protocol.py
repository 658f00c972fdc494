"""The evaluation protocol as the docs state it: item level ranks every item, the user's history included.

RecBole 1.2.1 masks the history of general recommenders in full-sort evaluation, but passes no history index for
sequential models, and the plugin adds none: a target that repeats an item of the user's history is ranked like any
other item and can be a hit (README "Evaluation", ``recbole_diffgm.evaluation``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recbole.data import data_preparation
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType
from torch import nn

from conftest import NAME, N_ITEMS, read_atomic
from recbole_diffgm import Config, create_dataset, get_model, get_trainer

USERS = 24


def write_repeats(data_path) -> None:
    """The tiny catalogue's users, 6 items each; every even user's last item (the test target) repeats the item
    before it (the last of its test history), the odd users' sequences hold no repeat."""
    tokens = read_atomic(data_path / NAME / f"{NAME}.item")["item_id:token"].tolist()
    with (data_path / NAME / f"{NAME}.inter").open("w") as inter:
        inter.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(USERS):
            items = [tokens[(2 * user + k) % N_ITEMS] for k in range(6)]
            if user % 2 == 0:
                items[5] = items[4]
            inter.writelines(f"u{user}\t{item}\t{k}\n" for k, item in enumerate(items))


class RepeatLast(SequentialRecommender):
    """Recommends the last item of the history, alone: a hit at 1 exactly when the target repeats it."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.weight = nn.Parameter(torch.ones(1))  # RecBole's trainer builds an optimizer over the parameters

    def full_sort_predict(self, interaction) -> torch.Tensor:
        sequence, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        last = sequence.gather(1, (length - 1)[:, None])[:, 0]
        scores = torch.zeros(len(sequence), self.n_items, device=sequence.device)
        return scores.scatter(1, last[:, None], self.weight.expand(len(sequence), 1))


@pytest.fixture
def repeat_config(tiny_config) -> dict:
    write_repeats(Path(tiny_config["data_path"]))
    return {**tiny_config, "topk": [1], "metrics": ["Hit"], "valid_metric": "Hit@1"}


def test_a_target_that_repeats_the_history_is_a_hit_for_a_recbole_model(repeat_config):
    config = Config("SASRec", NAME, config_dict={**repeat_config, "hidden_size": 8, "inner_size": 8, "n_layers": 1,
                                                 "n_heads": 1})
    _, _, test = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, RepeatLast(config, test._dataset))
    result = trainer.evaluate(test, load_best_model=False)
    # Every even user's target is the last item of its history: all of them hit; no odd user can.
    assert result["hit@1"] == pytest.approx(0.5)


def test_a_generative_model_scores_the_history_like_any_other_item(repeat_config):
    config = Config("DiffGM", NAME, config_dict=repeat_config)
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("DiffGM")(config, train._dataset).eval()
    trainer = get_trainer(config["MODEL_TYPE"], "DiffGM")(config, model)
    trainer.tot_item_num = test._dataset.item_num  # as RecBole's evaluate sets it before its batches
    repeated = 0
    for batch in test:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
        history = interaction["item_id_list"].to(scores.device)
        history_scores = scores.gather(1, history)[history > 0]  # 0 pads the history
        assert torch.isfinite(history_scores).all()  # nothing of the history is masked ...
        in_history = (history[positive_u] == positive_i[:, None].to(history.device)).any(dim=1)
        assert torch.isfinite(scores[positive_u, positive_i][in_history]).all()  # ... so a repeated target ranks
        repeated += int(in_history.sum())
    assert repeated == USERS // 2
