"""Trainers: ``PluginTrainerMixin`` for every model's RecBole trainer, ``GenerativeTrainer`` for models that decode
with a beam."""

from __future__ import annotations

import csv
import logging
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


def _curve_file_of(model_file: str | Path) -> Path:
    """The learning curve's CSV, named after the run's checkpoint: in the folder of RecBole's log file (which a
    process keeps for all its runs), else beside the checkpoint."""
    name = Path(model_file).with_suffix(".curve.csv").name
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename).parent / name
    return Path(model_file).parent / name


def _write_csv_atomically(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".partial",
                                     delete=False, newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out.name, path)


def save_atomically(state: dict, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, renamed into place: a reader never sees a
    partial checkpoint, and an interrupted write leaves the previous file as it was."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        torch.save(state, out, pickle_protocol=4)
    os.replace(out.name, path)


def parse_duration(value, key: str) -> float | None:
    """Seconds from ``value``: a number of seconds, or text with a unit (``90s``, ``60m``, ``1.5h``); ``None`` stays
    ``None``. ``key`` names the setting in the error."""
    if value is None:
        return None
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise InputError(f"{key} '{value}': give a positive duration in seconds or with a unit, e.g. 3600, 60m, 1.5h")
    return seconds


def _now() -> dict[str, float]:
    return {"wall": time.monotonic(), "process": time.process_time()}


class _BudgetSpent(Exception):
    """Raised between epochs when the next epoch would end past ``time_budget``."""


def resume_file_of(model_file: str | Path) -> Path:
    """Where a run whose best checkpoint is ``model_file`` keeps the state it resumes from."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}-resume{model_file.suffix}")


class PluginTrainerMixin:
    """What every trainer of this plugin adds to RecBole's (mixed into GenerativeTrainer and into RecBole's
    trainers by ``utils.get_trainer``): atomic checkpoints, resumable runs, a time-left line per epoch, a
    training-time budget, a learning curve, one selection rule, the two places where RecBole reloads its own
    checkpoints (``compat.load_checkpoint``), and DDP:

    - ``time_budget`` (``parse_duration``) on ``time_budget_clock`` (``wall`` or ``process`` CPU time) counts
      training time, not validation (a model's decoding cost is not its training budget; ``validation_seconds``
      reports it): training stops at the first epoch boundary where one more epoch, at the mean epoch time so
      far, would end past the budget; never before the first validation. ``stop_reason`` then says
      ``time budget`` (else ``patience`` or ``epoch cap``);
    - ``curve``: after every validation, a row with the epoch, the training wall and CPU seconds so far, the
      validation seconds so far and every validation metric, written to ``curve_file`` (a CSV beside the run's
      log) as it grows, so that a killed run keeps its curve;
    - ``valid_metric_weights`` (e.g. ``{ndcg@10: 0.8, recall@10: 0.2}``): model selection and early stopping on
      that weighted sum of validation metrics instead of ``valid_metric`` alone, for any model;

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
        self.time_budget = parse_duration(config["time_budget"], "time_budget")
        clocks = {"wall": time.monotonic, "process": time.process_time}
        if config["time_budget_clock"] not in clocks:
            raise InputError(f"unknown time_budget_clock '{config['time_budget_clock']}'; choose one of wall, process")
        self._budget_clock = clocks[config["time_budget_clock"]]
        # Time so far ({clock: seconds}) with validation, and in validation alone, across resumes.
        self._spent = {"wall": 0.0, "process": 0.0}
        self._validating = {"wall": 0.0, "process": 0.0}
        self.epochs_trained = 0  # every epoch of this run, with its validation, resumed ones included
        self._clock_start = None
        self._epoch_idx = None  # the epoch in progress, until it and its validation are over
        self._last_epoch = -1
        self.curve: list[dict] = []
        self.curve_file = _curve_file_of(self.saved_model_file)
        self.stop_reason = None

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
        if self._clock_start is None:
            self._clock_start = _now()
        self._close_epoch()
        self._check_budget()
        if self._resumed_loader_state is not None:
            train_data.generator.set_state(self._resumed_loader_state)
            self._resumed_loader_state = None
        elif epoch_idx > 0 and self._is_writer():
            self._save_resume_state(epoch_idx - 1, train_data)
        self._log_time_left(epoch_idx)
        self._epoch_idx = epoch_idx
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _close_epoch(self) -> None:
        """Count the epoch in progress (with its validation) as trained, once."""
        if self._epoch_idx is not None:
            self.epochs_trained, self._last_epoch, self._epoch_idx = self.epochs_trained + 1, self._epoch_idx, None

    def _elapsed(self) -> dict[str, float]:
        """Time so far on each clock (``wall``, ``process``), validation included, across resumes."""
        if self._clock_start is None:
            return dict(self._spent)
        now = _now()
        return {clock: self._spent[clock] + now[clock] - self._clock_start[clock] for clock in now}

    def training_seconds(self) -> dict[str, float]:
        """Training time so far on each clock, validation left out (``validation_seconds``), across resumes."""
        elapsed = self._elapsed()
        return {clock: elapsed[clock] - self._validating[clock] for clock in elapsed}

    def validation_seconds(self) -> dict[str, float]:
        return dict(self._validating)

    def _check_budget(self) -> None:
        if self.time_budget is None or self.epochs_trained == 0 or self.best_valid_result is None:
            return
        spent = self.training_seconds()[self.config["time_budget_clock"]]
        if spent + spent / self.epochs_trained > self.time_budget:
            self.logger.info(f"time budget: {spent / 60:.1f} of {self.time_budget / 60:.1f} min "
                             f"({self.config['time_budget_clock']} clock) spent and an epoch takes "
                             f"{spent / self.epochs_trained / 60:.1f} min: training stops; the best checkpoint is tested")
            raise _BudgetSpent

    def _valid_epoch(self, valid_data, show_progress=False):
        start = _now()
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        end = _now()
        self._validating = {clock: self._validating[clock] + end[clock] - start[clock] for clock in end}
        weights = self.config["valid_metric_weights"]
        if weights:
            prefix = getattr(self, "metric_prefix", "")
            weights = {prefix + metric.lower(): weight for metric, weight in weights.items()}
            missing = [metric for metric in weights if metric not in valid_result]
            if missing:
                raise InputError(f"valid_metric_weights names {missing}, which the validation does not compute "
                                 f"(it computes {', '.join(valid_result)})")
            valid_score = sum(weight * valid_result[metric] for metric, weight in weights.items())
        self._record_curve(valid_score, valid_result)
        return valid_score, valid_result

    def _record_curve(self, valid_score: float, valid_result: dict) -> None:
        seconds, validating = self.training_seconds(), self.validation_seconds()
        self.curve.append({"epoch": self._epoch_idx, "train_seconds": round(seconds["wall"], 3),
                           "train_cpu_seconds": round(seconds["process"], 3),
                           "valid_seconds": round(validating["wall"], 3), "valid_score": float(valid_score),
                           **{name: float(value) for name, value in valid_result.items()}})
        if self._is_writer():
            _write_csv_atomically(self.curve, self.curve_file)

    def best_epoch(self) -> int | None:
        """The epoch of the selected checkpoint: the last validation with the best score (RecBole's early stopping
        takes a tie as an improvement)."""
        if not self.curve:
            return None
        sign = 1 if self.valid_metric_bigger else -1
        return max(reversed(self.curve), key=lambda row: sign * row["valid_score"])["epoch"]

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
        try:
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self._close_epoch()
            self.stop_reason = "epoch cap" if self._last_epoch + 1 >= self.epochs else "patience"
        except _BudgetSpent:
            self.stop_reason = "time budget"
            self._add_hparam_to_tensorboard(self.best_valid_score)
            result = self.best_valid_score, self.best_valid_result
        if self._clock_start is not None:  # a later fit (GenerativeTrainer's second phase) goes on from here
            self._spent, self._clock_start = self._elapsed(), None
        resume_file_of(self.saved_model_file).unlink(missing_ok=True)  # finished: nothing left to resume
        return result

    def _save_resume_state(self, epoch: int, train_data) -> None:
        save_atomically({
            "config": self.config, "epoch": epoch, "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
            "best_model_file": self.saved_model_file, "state_dict": self.model.state_dict(),
            "elapsed_seconds": self._elapsed(), "validation_seconds": self.validation_seconds(),
            "trained_epochs": self.epochs_trained, "curve": self.curve,
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
        self._spent = dict(checkpoint.get("elapsed_seconds", self._spent))
        self._validating = dict(checkpoint.get("validation_seconds", self._validating))
        self.epochs_trained = checkpoint.get("trained_epochs", 0)
        self.curve = list(checkpoint.get("curve", []))
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
      to 0 at the last step of ``planned_epochs()`` (per optimizer step; a resumed run continues the schedule);
    - with ``eval_level: sid``, the DiffGRM release's SID-level protocol (``GenerativeRecommender.sid_list``):
      RecBole's evaluator ranks list positions, and the target is the position of its SID; with ``sid_masked``,
      each target counts as its SID's representative item, which the model scores alone for its SID; the
      metrics are reported with a ``sid_`` (``sid_ndcg@10``) or ``sid_masked_`` prefix.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler = None
        self.metric_prefix = {"item": "", "sid": "sid_", "sid_masked": "sid_masked_"}.get(config["eval_level"], "")
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
        """The epochs the cosine decays over: ``epochs``, or with ``time_budget`` the epochs that fit in it at the
        mean epoch time so far (re-planned after every epoch), so that a budgeted run ends with a decayed rate."""
        if self.time_budget is None or self.epochs_trained == 0:
            return self.epochs
        per_epoch = self.training_seconds()[self.config["time_budget_clock"]] / self.epochs_trained
        return max(self.epochs_trained + 1, min(self.epochs, int(self.time_budget // per_epoch)))

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
        if self.model.eval_level == "sid":  # the release's list: columns are list positions, not items
            interaction, _, positive_u, positive_i = batched_data
            interaction = interaction.to(self.device)
            scores, columns = self.model.sid_list(interaction[self.model.ITEM_SEQ], positive_u.to(self.device),
                                                  positive_i.to(self.device))
            return interaction, scores, positive_u, columns.to(positive_i.device)
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.model.eval_level == "sid_masked":
            positive_i = self.model.sid_representative[positive_i.to(self.device)].to(positive_i.device)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        return result and OrderedDict((self.metric_prefix + name, value) for name, value in result.items())

    def _valid_epoch(self, valid_data, show_progress=False):
        test_beam_size, self.model.beam_size = self.model.beam_size, self.config["valid_beam_size"]
        try:
            return super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.model.beam_size = test_beam_size
