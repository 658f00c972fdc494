"""``GenerativeTrainer``: RecBole's trainer for models that decode with a beam."""

from __future__ import annotations

from recbole.trainer import Trainer

from recbole_diffgm.compat import CheckpointCompatMixin


class GenerativeTrainer(CheckpointCompatMixin, Trainer):
    """Validation during training decodes with ``valid_beam_size``; every other evaluation (the test, a
    saved model) with the model's own ``beam_size``, which is ``test_beam_size``."""

    def _valid_epoch(self, valid_data, show_progress=False):
        test_beam_size, self.model.beam_size = self.model.beam_size, self.config["valid_beam_size"]
        try:
            return super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.model.beam_size = test_beam_size
