"""Trainers: ``PluginTrainerMixin`` for every model's RecBole trainer, ``GenerativeTrainer`` for models that decode
with a beam."""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from recbole.trainer import Trainer
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.errors import InputError


def save_atomically(state: dict, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, renamed into place: a reader never sees a
    partial checkpoint, and an interrupted write leaves the previous file as it was."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        torch.save(state, out, pickle_protocol=4)
    os.replace(out.name, path)


def resume_file_of(model_file: str | Path) -> Path:
    """Where a run whose best checkpoint is ``model_file`` keeps the state it resumes from."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}-resume{model_file.suffix}")


class PluginTrainerMixin:
    """What every trainer of this plugin adds to RecBole's (mixed into GenerativeTrainer and into RecBole's
    trainers by ``utils.get_trainer``): atomic checkpoints, resumable runs, a time-left line per epoch, the
    two places where RecBole reloads its own checkpoints (``compat.load_checkpoint``), and DDP:

    - at the start of every epoch after the first, the state after the previous one (weights, optimizer,
      early-stopping counters, every random generator, the training loader's shuffling generator) is written
      to ``resume_file_of(saved_model_file)``; ``resume_checkpoint`` of that file continues the run exactly as
      if it had not stopped; the file is removed when training ends;
    - from the second epoch on, each epoch logs the time per epoch so far and an estimate of the time left;
    - on the CPU (RecBole pins the DDP model to ``device_ids=[local_rank]``, which only a GPU module accepts);
    - every rank names the checkpoint as rank 0 does (RecBole names it by each process's clock, to the
      second, and only rank 0 writes it), and waits for rank 0 before reloading it for the test.
    """

    def __init__(self, config, model):
        cpu_ddp = not config["single_spec"] and config["device"].type == "cpu"
        if cpu_ddp:
            config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            if cpu_ddp:
                config["single_spec"] = False
        if cpu_ddp:
            self.distributed_model = DistributedDataParallel(self.model)
        if not config["single_spec"]:
            names = [self.saved_model_file]
            torch.distributed.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
        self._resumed_loader_state = None
        self._epoch_clock = None  # (first epoch of this process, when it started): the time-left estimate

    def _is_writer(self) -> bool:
        return self.config["single_spec"] or self.config["local_rank"] == 0

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        if not self._is_writer():
            return
        partial = Path(saved_model_file).with_name(f".{Path(saved_model_file).name}.partial")
        super()._save_checkpoint(epoch, verbose=False, saved_model_file=str(partial), **kwargs)
        os.replace(partial, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self._resumed_loader_state is not None:
            train_data.generator.set_state(self._resumed_loader_state)
            self._resumed_loader_state = None
        elif epoch_idx > 0 and self._is_writer():
            self._save_resume_state(epoch_idx - 1, train_data)
        self._log_time_left(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _log_time_left(self, epoch_idx: int) -> None:
        now = time.monotonic()
        if self._epoch_clock is None:
            self._epoch_clock = (epoch_idx, now)
            return
        first_epoch, started = self._epoch_clock
        per_epoch = (now - started) / (epoch_idx - first_epoch)
        epochs = self.config["epochs"]
        self.logger.info(f"epoch {epoch_idx}/{epochs}: {per_epoch / 60:.1f} min per epoch so far (with validation); "
                         f"about {(epochs - epoch_idx) * per_epoch / 60:.0f} min left, less if early stopping ends it")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        resume_file_of(self.saved_model_file).unlink(missing_ok=True)  # finished: nothing left to resume
        return result

    def _save_resume_state(self, epoch: int, train_data) -> None:
        save_atomically({
            "config": self.config, "epoch": epoch, "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
            "best_model_file": self.saved_model_file, "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "train_loader": train_data.generator.get_state()},
        }, resume_file_of(self.saved_model_file))

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
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint {resume_file} was written by model {checkpoint['config']['model']}, "
                f"not {self.config['model']}; loading its state_dict may fail."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._resumed_loader_state = rng["train_loader"]
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")


class GenerativeTrainer(PluginTrainerMixin, Trainer):
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
