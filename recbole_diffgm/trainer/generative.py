"""``GenerativeTrainer``: RecBole's trainer for the models that decode semantic IDs with a beam."""

from __future__ import annotations

import math
from collections import OrderedDict

from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_diffgm.evaluation import metric_prefix
from recbole_diffgm.trainer.memory import check_trainer_memory
from recbole_diffgm.trainer.plugin import PluginTrainerMixin


class GenerativeTrainer(PluginTrainerMixin, Trainer):
    """RecBole's trainer, plus:

    - validation during training decodes with ``valid_beam_size``; every other evaluation (the test, a
      saved model) with the model's own ``beam_size``, which is ``test_beam_size``;
    - validation starts at epoch ``eval_start_epoch`` (0-based; RecBole's ``eval_step`` still sets the interval),
      so the early epochs of a long recipe do not pay for beam decoding;
    - with ``warmup_steps`` set, the learning rate rises linearly for that many steps, then follows a cosine
      to 0 at the last step of ``planned_epochs()`` (per optimizer step; a resumed run continues the schedule);
    - with ``eval_level: sid``, the DiffGRM release's SID-level protocol (``GenerativeRecommender.sid_list``):
      RecBole's evaluator ranks list positions, and the target is the position of its SID; with ``sid_full_sort``,
      each target counts as its SID's representative item, which the model scores alone for its SID; the
      metrics carry the level's prefix (``evaluation.metric_prefix``: ``sid_ndcg@10``).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler = None
        self.beam_size = None  # the beam of the evaluation under way: valid_beam_size in validation, else the model's
        # The cosine's plan reads the config's cap, never ``self.epochs``: ``fit`` lowers that for the epochs before
        # the first validation, and a plan that followed it would decay to 0 there and jump back after.
        self.epoch_cap = config["epochs"]
        self.metric_prefix = metric_prefix(model.eval_level)
        self.valid_metric = self.metric_prefix + self.valid_metric

    def _schedule_learning_rate(self, steps_per_epoch: int) -> None:
        warmup = self.config["warmup_steps"]
        if warmup is None or self.scheduler is not None:
            return
        done = self.start_epoch * steps_per_epoch

        def factor(step: int) -> float:
            step += done
            if step < warmup:
                return step / max(1, warmup)
            total = self.planned_epochs() * steps_per_epoch
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = LambdaLR(self.optimizer, factor)
        self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())

    def planned_epochs(self) -> int:
        """The epochs the cosine decays over: the config's ``epochs``, or with ``time_budget`` the epochs that fit in
        it at the mean epoch time so far (re-planned after every epoch), so that a budgeted run ends with a decayed
        rate. The same in both phases of ``fit`` (before and after the first validation)."""
        if self.time_budget is None or self.epochs_trained == 0:
            return self.epoch_cap
        per_epoch = self.training_seconds()[self.config["time_budget_clock"]] / self.epochs_trained
        return max(self.epochs_trained + 1, min(self.epoch_cap, int(self.time_budget // per_epoch)))

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._schedule_learning_rate(len(train_data))
        first_eval = min(self.config["eval_start_epoch"] or 0, self.epochs)
        if valid_data and first_eval > self.start_epoch:
            # Train the epochs before the first evaluation as RecBole trains without validation data.
            epochs, self.epochs = self.epochs, first_eval
            super().fit(train_data, None, verbose, False, show_progress, callback_fn)
            self.start_epoch, self.epochs = first_eval, epochs
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _full_sort_batch_eval(self, batched_data):
        # RecBole's, with the beam of this evaluation; generative models are sequential, so RecBole passes no
        # history to mask (history_index is None) and item 0, the padding, is already -inf.
        interaction, _, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        if self.model.eval_level == "sid":  # the release's list: columns are list positions, not items
            scores, columns = self.model.sid_list(interaction[self.model.ITEM_SEQ], positive_u.to(self.device),
                                                  positive_i.to(self.device), self.beam_size)
            return interaction, scores, positive_u, columns.to(positive_i.device)
        scores = self.model.full_sort_predict(interaction, self.beam_size)
        if self.model.eval_level == "sid_full_sort":
            positive_i = self.model.sid_representative[positive_i.to(self.device)].to(positive_i.device)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        check_trainer_memory(self, eval_data, training=False)  # a saved model evaluated alone (fit checks first)
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        return result and OrderedDict((self.metric_prefix + name, value) for name, value in result.items())

    def _valid_epoch(self, valid_data, show_progress=False):
        self.beam_size = self.config["valid_beam_size"]
        try:
            return super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.beam_size = None
