"""``GenerativeTrainer``: RecBole's trainer for models that decode with a beam."""

from __future__ import annotations

import math
from collections import OrderedDict

from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_diffgm.compat import CheckpointCompatMixin
from recbole_diffgm.errors import InputError


class GenerativeTrainer(CheckpointCompatMixin, Trainer):
    """RecBole's trainer, plus:

    - validation during training decodes with ``valid_beam_size``; every other evaluation (the test, a
      saved model) with the model's own ``beam_size``, which is ``test_beam_size``;
    - validation starts at epoch ``eval_start_epoch`` (0-based; RecBole's ``eval_step`` still sets the interval),
      so the early epochs of a long recipe do not pay for beam decoding;
    - with ``warmup_steps`` set, the learning rate rises linearly for that many steps, then follows a cosine
      to 0 at the last step of ``epochs`` (per optimizer step; a resumed run continues the schedule);
    - with ``eval_level: sid``, a hit is generating the target's SID (the paper's protocol): each target
      counts as its SID's representative item, which the model scores alone for its SID; every metric is
      then reported with a ``sid_`` prefix (``sid_ndcg@10``);
    - with ``valid_metric_weights`` (e.g. ``{ndcg@10: 0.8, recall@10: 0.2}``), model selection and early
      stopping use that weighted sum of validation metrics instead of ``valid_metric`` alone.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler = None
        self.metric_prefix = "sid_" if config["eval_level"] == "sid" else ""
        self.valid_metric = self.metric_prefix + self.valid_metric

    def _schedule_learning_rate(self, steps_per_epoch: int) -> None:
        warmup = self.config["warmup_steps"]
        if warmup is None or self.scheduler is not None:
            return
        total, done = self.epochs * steps_per_epoch, self.start_epoch * steps_per_epoch

        def factor(step: int) -> float:
            step += done
            if step < warmup:
                return step / max(1, warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = LambdaLR(self.optimizer, factor)
        self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())

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
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.metric_prefix:
            positive_i = self.model.sid_representative[positive_i.to(self.device)].to(positive_i.device)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        return result and OrderedDict((self.metric_prefix + name, value) for name, value in result.items())

    def _valid_epoch(self, valid_data, show_progress=False):
        test_beam_size, self.model.beam_size = self.model.beam_size, self.config["valid_beam_size"]
        try:
            valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.model.beam_size = test_beam_size
        weights = self.config["valid_metric_weights"]
        if weights:
            weights = {self.metric_prefix + metric: weight for metric, weight in weights.items()}
            missing = [metric for metric in weights if metric not in valid_result]
            if missing:
                raise InputError(f"valid_metric_weights names {missing}, which the validation does not compute "
                                 f"(it computes {', '.join(valid_result)})")
            valid_score = sum(weight * valid_result[metric] for metric, weight in weights.items())
        return valid_score, valid_result
