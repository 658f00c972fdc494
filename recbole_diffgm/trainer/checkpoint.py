"""Checkpoints, resume state and random state: what lets a run be killed and continued exactly.

``CheckpointMixin`` goes before a RecBole trainer in the bases (``PluginTrainerMixin`` does that): every checkpoint
is written atomically, RecBole's two reloads of its own checkpoints go through ``compat.load_checkpoint``, and
from the second epoch on the state after the previous epoch (weights, optimizer, early-stopping counters, every
random generator, the training loader's shuffling generator, and the trainer's ``progress_state``) is written to
``resume_file_of(saved_model_file)``, which ``resume_checkpoint`` continues from. Once training has ended, the same
file holds the trained state (``save_trained_state``: the best checkpoint's scores and the progress, no weights)
until the run's test is done, so a run killed while testing (a CPD beam over every test user can take an hour)
resumes to its test, not to a new training.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.files import replaced_atomically


def save_atomically(state: dict, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, renamed into place: a reader never sees a
    partial checkpoint, and an interrupted write leaves the previous file as it was."""
    with replaced_atomically(path) as partial:
        torch.save(state, partial, pickle_protocol=4)


def resume_file_of(model_file: str | Path) -> Path:
    """Where a run whose best checkpoint is ``model_file`` keeps the state it resumes from."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}-resume{model_file.suffix}")


def random_state(train_data) -> dict:
    """Every random generator a run draws from, and the training loader's shuffling generator."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "train_loader": train_data.generator.get_state()}


def restore_random_state(rng: dict) -> torch.Tensor:
    """Set the generators of ``random_state``; returns the loader's state, which only the loader can take."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return rng["train_loader"]


class CheckpointMixin:
    """Atomic checkpoints, the resume state and exact resumption, for any RecBole trainer.

    A subclass says what else it resumes, ``progress_state()`` (a dict stored in the resume state) and
    ``restore_progress_state(checkpoint)``, and calls ``discard_resume_state()`` when training has ended.
    """

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: DDP ranks starting together race on it
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        self._resumed_loader_state = None
        self.training_done = False  # resumed from a trained state: fit has nothing left to train

    def _is_writer(self) -> bool:
        return self.config["single_spec"] or self.config["local_rank"] == 0

    def progress_state(self) -> dict:
        return {}

    def restore_progress_state(self, checkpoint: dict) -> None:
        pass

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        if not self._is_writer():
            return
        with replaced_atomically(saved_model_file) as partial:
            super()._save_checkpoint(epoch, verbose=False, saved_model_file=str(partial), **kwargs)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self._resumed_loader_state is not None:
            train_data.generator.set_state(self._resumed_loader_state)
            self._resumed_loader_state = None
        elif epoch_idx > 0:
            self._save_resume_state(epoch_idx - 1, train_data)
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _rank(self) -> int:
        return 0 if self.config["single_spec"] else torch.distributed.get_rank()

    def _save_resume_state(self, epoch: int, train_data) -> None:
        # Under DDP the weights and optimizer are the same on every rank, the random generators are not: rank 0
        # writes them all, so that every rank resumes its own.
        rng_by_rank = [random_state(train_data)]
        if not self.config["single_spec"]:
            rng_by_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng_by_rank, random_state(train_data))
        if not self._is_writer():
            return
        save_atomically({
            "config": self.config, "epoch": epoch, "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
            "best_model_file": self.saved_model_file, "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
            "rng": rng_by_rank[0], "rng_by_rank": rng_by_rank, **self.progress_state(),
        }, resume_file_of(self.saved_model_file))

    def discard_resume_state(self) -> None:
        """Training has ended (not crashed): nothing is left to resume."""
        resume_file_of(self.saved_model_file).unlink(missing_ok=True)

    def save_trained_state(self) -> None:
        """Training has ended and the test is next: what the test and the run's result need (the best
        checkpoint's file and scores, ``progress_state``), in the resume file; ``discard_resume_state`` after it."""
        if self._is_writer():
            save_atomically({"config": self.config, "training_done": True, "best_valid_score": self.best_valid_score,
                             "best_valid_result": self.best_valid_result, "best_model_file": self.saved_model_file,
                             **self.progress_state()}, resume_file_of(self.saved_model_file))

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            if not self.config["single_spec"]:
                torch.distributed.barrier()  # rank 0 has written its last checkpoint
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def resume_checkpoint(self, resume_file):
        """Continue from ``resume_file``: a resume state (``resume_file_of``) continues exactly; a best-model
        checkpoint of RecBole's continues from its epoch with its weights and optimizer."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, self.device)
        self.saved_model_file = checkpoint.get("best_model_file", resume_file)
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self.training_done = checkpoint.get("training_done", False)
        if self.training_done:  # killed while testing: the test of the best checkpoint is what is left
            self.restore_progress_state(checkpoint)
            self.logger.info(f"Checkpoint loaded: training had ended; the best checkpoint {self.saved_model_file} "
                             "is tested")
            return
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint {resume_file} was written by model {checkpoint['config']['model']}, "
                f"not {self.config['model']}; loading its state_dict may fail."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.restore_progress_state(checkpoint)
        rng = checkpoint.get("rng_by_rank", [checkpoint.get("rng")])
        if rng[0]:
            self._resumed_loader_state = restore_random_state(rng[self._rank()])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")
