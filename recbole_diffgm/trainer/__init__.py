"""Trainers: ``PluginTrainerMixin`` for every model's RecBole trainer (schedule, selection, curve; checkpoints and
resumption from ``checkpoint.CheckpointMixin``), ``GenerativeTrainer`` for the models that decode with a beam."""

from recbole_diffgm.trainer.checkpoint import CheckpointMixin, resume_file_of, save_atomically
from recbole_diffgm.trainer.generative import GenerativeTrainer
from recbole_diffgm.trainer.plugin import PluginTrainerMixin

__all__ = ["CheckpointMixin", "GenerativeTrainer", "PluginTrainerMixin", "resume_file_of", "save_atomically"]
