"""``PluginTrainerMixin``: what every model's RecBole trainer gets from this plugin: the training schedule (a time
budget, the time left), one selection rule, a learning curve, DDP on the CPU; checkpoints and resumption come from
``CheckpointMixin``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from recbole_diffgm.checks import config_choice, parse_duration
from recbole_diffgm.errors import InputError
from recbole_diffgm.files import write_csv_atomically
from recbole_diffgm.trainer.checkpoint import CheckpointMixin
from recbole_diffgm.trainer.memory import check_trainer_memory


def _curve_file_of(model_file: str | Path) -> Path:
    """The learning curve's CSV, named after the run's checkpoint: in the folder of RecBole's log file (which a
    process keeps for all its runs), else beside the checkpoint."""
    name = Path(model_file).with_suffix(".curve.csv").name
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename).parent / name
    return Path(model_file).parent / name


def _now() -> dict[str, float]:
    return {"wall": time.monotonic(), "process": time.process_time()}


# The first estimate of a run's cost is logged at the end of the first step after this much training (so within the
# first minute unless one step takes longer), from the steps measured so far.
FIRST_ESTIMATE_AFTER_S = 20


class _BudgetSpent(Exception):
    """Raised between epochs when the next epoch would end past ``time_budget``."""


def _duration(seconds: float) -> str:
    """``seconds`` in the unit that reads best: minutes, hours or days."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days"


def epochs_the_budget_allows(budget: float, spent: float, epochs_trained: int) -> int:
    """Further epochs a run trains before ``_check_budget`` stops it: it starts another while one more epoch at the
    mean cost so far still fits in the budget."""
    return max(0, int((budget - spent) // (spent / epochs_trained)))


class PluginTrainerMixin(CheckpointMixin):
    """What every trainer of this plugin adds to RecBole's (mixed into GenerativeTrainer and into RecBole's
    trainers by ``utils.get_trainer``): resumable runs and atomic checkpoints (``CheckpointMixin``), a time-left
    line per epoch, a training-time budget, a learning curve, one selection rule, and DDP:

    - ``time_budget`` (``parse_duration``) on ``time_budget_clock`` (``wall`` or ``process`` CPU time) counts
      training time, not validation (a model's decoding cost is not its training budget; ``validation_seconds``
      reports it): training stops at the first epoch boundary where one more epoch, at the mean epoch time so
      far, would end past the budget; never before the first validation. The decision is taken as an epoch's
      training ends, and with ``eval_step`` > 1 the epoch after which no other fits is validated whatever
      ``eval_step`` says, so a budget's last epochs are never left out of selection. ``stop_reason`` then says
      ``time budget`` (else ``patience`` or ``epoch cap``);
    - ``curve``: after every validation, a row with the epoch, the training wall and CPU seconds so far, the
      validation seconds so far and every validation metric, written to ``curve_file`` (a CSV beside the run's
      log) as it grows, so that a killed run keeps its curve;
    - ``valid_metric_weights`` (e.g. ``{ndcg@10: 0.8, recall@10: 0.2}``): model selection and early stopping on
      that weighted sum of validation metrics instead of ``valid_metric`` alone, for any model;

    - the resume state (``CheckpointMixin``) carries the time spent, the epochs trained and the curve
      (``progress_state``), so a resumed run keeps its budget and curve;
    - the first epoch this process trains logs an estimate of the epoch's and the run's training time from its
      first steps (``FIRST_ESTIMATE_AFTER_S``), with ``slow_run_advice`` when the run would train for over an
      hour; from the second epoch on, each epoch logs the time per epoch so far and an estimate of the time left;
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
        self._epoch_clock = None  # (first epoch of this process, when it started): the time-left estimate
        # (steps, steps per epoch, when the first epoch of this process started, training seconds on the budget's clock
        # before it: a resumed run's) until its first estimate is logged
        self._first_steps = None
        self.slow_run_advice: str | None = None  # what to run instead of a run that trains for over an hour
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.register_step_post_hook(lambda *_: self._count_first_step())
        self.time_budget = parse_duration(config["time_budget"], "time_budget")
        config_choice(config, "time_budget_clock", ("wall", "process"))
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
        self._another_epoch_fits: bool | None = None  # the budget's answer when the last epoch's training ended

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self._clock_start is None:
            self._clock_start = _now()
        self._close_epoch()
        spent = self._budget_spent()
        self._check_budget(spent)
        self._log_time_left(epoch_idx, spent)
        if self._epoch_clock[0] == epoch_idx:  # the first epoch of this process
            self._first_steps = (0, len(train_data), _now(), spent or 0.0)
        self._epoch_idx = epoch_idx
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self._decide_on_the_budget()
        return loss

    def _decide_on_the_budget(self) -> None:
        """As an epoch's training ends: does the budget allow another? If not, this epoch is validated (RecBole's
        loop validates after ``_train_epoch`` when ``eval_step`` divides the epoch) and the next one is not
        trained (``_check_budget``), whatever time passes in between."""
        if self.time_budget is None:
            return
        spent = self._budget_spent(counting_this_epoch=True)
        self._another_epoch_fits = bool(epochs_the_budget_allows(self.time_budget, spent, self.epochs_trained + 1))
        if not self._another_epoch_fits and self.eval_step > 1:
            self.eval_step = 1

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

    def _budget_spent(self, counting_this_epoch: bool = False) -> float | None:
        """Training seconds on ``time_budget_clock`` so far, rank 0's under DDP; ``None`` without a budget or
        before the first epoch (the epoch in training counts as one with ``counting_this_epoch``)."""
        if self.time_budget is None or self.epochs_trained + counting_this_epoch == 0:
            return None
        spent = [self.training_seconds()[self.config["time_budget_clock"]]]
        if not self.config["single_spec"]:  # under DDP every rank stops where rank 0 does, or the others would hang
            torch.distributed.broadcast_object_list(spent, src=0)
        return spent[0]

    def _check_budget(self, spent: float | None) -> None:
        if spent is None or self.best_valid_result is None:  # never before one validation
            return
        # Decided as the last epoch's training ended (_decide_on_the_budget); a resumed run's first check, here.
        fits = self._another_epoch_fits
        if fits is None:
            fits = bool(epochs_the_budget_allows(self.time_budget, spent, self.epochs_trained))
        if fits:
            return
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
            write_csv_atomically(self.curve, self.curve_file)

    def best_epoch(self) -> int | None:
        """The epoch of the selected checkpoint: the last validation with the best score (RecBole's early stopping
        takes a tie as an improvement)."""
        if not self.curve:
            return None
        sign = 1 if self.valid_metric_bigger else -1
        return max(reversed(self.curve), key=lambda row: sign * row["valid_score"])["epoch"]

    def _log_time_left(self, epoch_idx: int, spent: float | None) -> None:
        now = time.monotonic()
        if self._epoch_clock is None:
            self._epoch_clock = (epoch_idx, now)
            return
        first_epoch, started = self._epoch_clock
        per_epoch = (now - started) / (epoch_idx - first_epoch)
        epochs = self.config["epochs"]
        left, limit = epochs - epoch_idx, "epoch cap"
        if spent is not None:
            budget_left = epochs_the_budget_allows(self.time_budget, spent, self.epochs_trained)
            if budget_left < left:
                left, limit = budget_left, "time budget"
        self.logger.info(f"epoch {epoch_idx}/{epochs}: {per_epoch / 60:.1f} min per epoch so far (with validation); "
                         f"about {left * per_epoch / 60:.0f} min left ({left} epoch{'s' * (left != 1)} to the "
                         f"{limit}), less if early stopping ends it")

    def _count_first_step(self) -> None:
        if self._first_steps is None:
            return
        steps, per_epoch, started, before = self._first_steps
        steps, now = steps + 1, _now()
        self._first_steps = (steps, per_epoch, started, before)
        if now["wall"] - started["wall"] >= FIRST_ESTIMATE_AFTER_S or steps == per_epoch:
            self._first_steps = None
            self._log_first_estimate(steps, per_epoch, {clock: now[clock] - started[clock] for clock in now}, before)

    def _log_first_estimate(self, steps: int, per_epoch: int, seconds: dict[str, float], before: float = 0.0) -> None:
        """The cost of an epoch and of the run's training, from its first ``steps`` of ``per_epoch`` (``before``: the
        training seconds a resumed run spent of its time budget already)."""
        epoch = {clock: value * per_epoch / steps for clock, value in seconds.items()}
        epochs = self.config["epochs"] - self._epoch_clock[0]
        run, plan = epochs * epoch["wall"], f"{epochs} epochs"
        if self.time_budget is not None:
            clock = self.config["time_budget_clock"]
            fitting = max(1, int((self.time_budget - before) // epoch[clock]))
            if fitting < epochs:
                run, plan = fitting * epoch["wall"], f"{fitting} epochs to the time budget"
            if before:
                plan += f" ({_duration(before)} of it spent before this resume)"
        line = (f"first estimate, from {steps} of {per_epoch} steps: {epoch['wall'] / 60:.1f} min an epoch of "
                f"training ({epoch['process'] / 60:.1f} CPU-min), {plan}: about {_duration(run)} of training, "
                "validation not counted")
        if run > 3600 and self.slow_run_advice:
            line += f"; {self.slow_run_advice}"
        self.logger.info(line)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.training_done:  # resumed from its trained state (CheckpointMixin.save_trained_state)
            return self.best_valid_score, self.best_valid_result
        check_trainer_memory(self, train_data, training=True)  # an evaluation batch that cannot fit: before epoch 0
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
        self.discard_resume_state()
        return result

    def progress_state(self) -> dict:
        return {"elapsed_seconds": self._elapsed(), "validation_seconds": self.validation_seconds(),
                "trained_epochs": self.epochs_trained, "curve": self.curve, "stop_reason": self.stop_reason}

    def restore_progress_state(self, checkpoint: dict) -> None:
        self._spent = dict(checkpoint.get("elapsed_seconds", self._spent))
        self._validating = dict(checkpoint.get("validation_seconds", self._validating))
        self.epochs_trained = checkpoint.get("trained_epochs", 0)
        self.curve = list(checkpoint.get("curve", []))
        self.stop_reason = checkpoint.get("stop_reason")
