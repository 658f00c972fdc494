"""The few run-time fixes RecBole 1.2.1 needs on today's numpy / torch / ray.

RecBole 1.2.1 (Feb 2025) installs cleanly on the current stack and then fails at run time. The
failures that a version pin cannot avoid are fixed here, each as narrowly as it allows; the pins
(``pandas<3``, ``setuptools<82``, ``ray==2.6.3``, Python < 3.12) are in ``setup.py``. Every fix has a
test in ``tests/test_compat.py`` that fails without it. This module is imported first by
``recbole_diffgm/__init__.py``, before anything imports RecBole or Ray.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

# numpy 2 removed these aliases. RecBole still reads them: ``Config.compatibility_settings`` reads
# ``np.float_``/``np.complex_``/``np.unicode_`` on every Config; the evaluator and dataset use
# ``np.float``; ``recbole.quick_start`` imports ``ray.tune``, whose TensorBoard logger uses
# ``np.bool8``. Only names numpy lacks are added, so no existing numpy name changes meaning.
_NUMPY_LEGACY_ALIASES = {
    "bool8": np.bool_,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "float": np.float64,
    "int": np.int_,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "unicode": np.str_,
}


def restore_numpy_aliases() -> None:
    """Add back the numpy 1.x aliases RecBole and Ray 2.6 use, where this numpy lacks them."""
    for name, value in _NUMPY_LEGACY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def ray_worker_setup() -> None:
    """Ray ``worker_process_setup_hook``: Ray workers unpickle ``ray.tune`` objects before any user
    code runs, so the numpy aliases must be restored inside each worker too."""
    restore_numpy_aliases()


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by RecBole's trainer.

    RecBole pickles its ``Config`` into every checkpoint with pickle protocol 4, which torch >= 2.6's
    ``weights_only=True`` default refuses ("Unsupported operand 149"). Only files that a RecBole
    trainer wrote are read through here, so ``weights_only=False`` is scoped to them; torch's safe
    default stays in force for every other ``torch.load`` in the process.
    """
    return torch.load(path, map_location=device, weights_only=False)


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


class CheckpointCompatMixin:
    """Mixed into RecBole's trainers: checkpoints written atomically, interrupted runs resumable, the two
    places where RecBole reloads its own checkpoints, and DDP:

    - at the start of every epoch after the first, the state after the previous one (weights, optimizer,
      early-stopping counters, every random generator, the training loader's shuffling generator) is written
      to ``resume_file_of(saved_model_file)``; ``resume_checkpoint`` of that file continues the run exactly as
      if it had not stopped; the file is removed when training ends;
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
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

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


restore_numpy_aliases()
