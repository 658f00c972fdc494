"""The few run-time fixes RecBole 1.2.1 needs on today's numpy / torch / ray.

RecBole 1.2.1 (Feb 2025) installs cleanly on the current stack and then fails at run time. The
failures that a version pin cannot avoid are fixed here, each as narrowly as it allows; the pins
(``pandas<3``, ``setuptools<82``, ``ray==2.6.3`` up to Python 3.11, the vendored RecBole wheel and a newer Ray
on 3.12/3.13) are in ``setup.py``. Every fix has a test in ``tests/test_compat.py`` that fails without it.
The fixes hold for both Rays (2.6.3 and 2.60); the Ray Tune API differences are handled in ``tuning.py``.
This module is imported first by ``recbole_diffgm/__init__.py``, before anything imports RecBole or Ray.
"""

from __future__ import annotations

import numpy as np
import torch

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
    code runs, so the numpy aliases must be restored inside each worker too (Ray 2.6's TensorBoard logger
    reads ``np.bool8``; on every Ray, RecBole code in a trial reads ``np.float_``)."""
    restore_numpy_aliases()


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by RecBole's trainer.

    RecBole pickles its ``Config`` into every checkpoint with pickle protocol 4, which torch >= 2.6's
    ``weights_only=True`` default refuses ("Unsupported operand 149"). Only files that a RecBole
    trainer wrote are read through here, so ``weights_only=False`` is scoped to them; torch's safe
    default stays in force for every other ``torch.load`` in the process.
    """
    return torch.load(path, map_location=device, weights_only=False)


def turn_off_anomaly_detection() -> None:
    """RecBole 1.2.1's ``sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` when imported, and importing
    any RecBole sequential model imports it (the package's ``__init__``): every later backward pass of the process
    then keeps a stack trace per operation, a debugging mode (SASRec-strong's training step on Beauty took 1.7x the
    CPU time). The package is imported once here, and the mode turned off again; SINE trains without it too."""
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


restore_numpy_aliases()
turn_off_anomaly_detection()
