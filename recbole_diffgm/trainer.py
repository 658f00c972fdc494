"""``GenerativeTrainer``: RecBole's trainer for models that decode with a beam."""

from __future__ import annotations

from recbole.trainer import Trainer

from recbole_diffgm.compat import CheckpointCompatMixin
from recbole_diffgm.errors import InputError


class GenerativeTrainer(CheckpointCompatMixin, Trainer):
    """RecBole's trainer, plus:

    - validation during training decodes with ``valid_beam_size``; every other evaluation (the test, a
      saved model) with the model's own ``beam_size``, which is ``test_beam_size``;
    - with ``valid_metric_weights`` (e.g. ``{ndcg@10: 0.8, recall@10: 0.2}``), model selection and early
      stopping use that weighted sum of validation metrics instead of ``valid_metric`` alone.
    """

    def _valid_epoch(self, valid_data, show_progress=False):
        test_beam_size, self.model.beam_size = self.model.beam_size, self.config["valid_beam_size"]
        try:
            valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.model.beam_size = test_beam_size
        weights = self.config["valid_metric_weights"]
        if weights:
            missing = [metric for metric in weights if metric not in valid_result]
            if missing:
                raise InputError(f"valid_metric_weights names {missing}, which the validation does not compute "
                                 f"(it computes {', '.join(valid_result)})")
            valid_score = sum(weight * valid_result[metric] for metric, weight in weights.items())
        return valid_score, valid_result
