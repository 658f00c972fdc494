"""Recommendations from a saved run: a history of raw item ids in, the top items with their titles out.

The run's checkpoint holds its weights and config; the dataset (id maps, titles) is loaded again from the
run's atomic files. For the SID models the checkpoint also holds the SIDs they were trained on: items added
to the ``.item`` file since then get SIDs from their text (``SIDDataset``) and are recommended when their SID
is generated, without retraining.

Logging: a ``Recommender`` in a process whose logging nobody has configured writes RecBole's log file
(``./log/<Model>/``, at the run's ``state`` level, Python's warnings while loading with it) and shows only
warnings and errors on the console (stderr); ``verbose=True`` shows all of it there too. Logging that is
configured already (by the application, or by an earlier RecBole run in the process) is left as it is.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_logger

from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.data.atomic_files import read_header
from recbole_diffgm.data.item_text import read_item_table
from recbole_diffgm.errors import InputError
from recbole_diffgm.quick_start import load_data_and_model


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float


class Recommender:
    """A saved run, loaded once, that recommends for any history of raw item ids."""

    def __init__(self, model_file: str | Path, config_overrides: dict | None = None, verbose: bool = False):
        if not Path(model_file).is_file():
            raise InputError(f"saved run not found: {model_file}")
        with _python_warnings_logged(_init_logging(model_file, config_overrides, verbose)):
            self.config, self.model, self.dataset, *_ = load_data_and_model(str(model_file), config_overrides)
            self.model.eval()
            self.item_field = self.dataset.iid_field
            item_file = Path(self.config["data_path"]) / f"{self.dataset.dataset_name}.item"
            has_title = item_file.is_file() and "title" in [name.split(":")[0] for name in read_header(item_file)]
            titles = read_item_table(item_file, self.item_field, ["title"])["title"] if has_title else {}
            self.titles = [titles.get(token, "") for token in self.dataset.field2id_token[self.item_field]]

    def recommend(self, history: list[str], top_k: int = 10, unknown_items: str = "skip",
                  exclude_history: bool = True) -> list[Recommendation]:
        """The ``top_k`` items for a user who interacted with ``history`` (raw item ids, oldest first).

        ``unknown_items``: ``skip`` ids the run does not know, with a warning, or ``error``. ``exclude_history``:
        leave out the items of the history."""
        if unknown_items not in ("skip", "error"):
            raise InputError(f"unknown unknown_items '{unknown_items}'; choose one of skip, error")
        token_ids = self.dataset.field2token_id[self.item_field]
        unknown = [token for token in history if token not in token_ids]
        if unknown and unknown_items == "error":
            raise InputError(f"history items unknown to the run's dataset '{self.dataset.dataset_name}': {', '.join(unknown)}")
        if unknown:
            getLogger().warning(f"history items unknown to the run's dataset, skipped: {', '.join(unknown)}")
        items = [token_ids[token] for token in history if token in token_ids][-self.model.max_seq_length:]
        if not items:
            raise InputError("the history has no item the run knows; give at least one known item id")
        sequence = torch.zeros(1, self.model.max_seq_length, dtype=torch.long)
        sequence[0, : len(items)] = torch.tensor(items)
        interaction = Interaction({self.model.ITEM_SEQ: sequence, self.model.ITEM_SEQ_LEN: torch.tensor([len(items)])})
        with torch.no_grad():
            scores = self.model.full_sort_predict(interaction.to(self.model.device))[0].cpu()
        scores[0] = float("-inf")  # the padding item
        if exclude_history:
            scores[items] = float("-inf")
        top = scores.topk(min(top_k, int(scores.isfinite().sum())))
        id_tokens = self.dataset.field2id_token[self.item_field]
        return [Recommendation(str(id_tokens[item]), self.titles[item], score)
                for score, item in zip(top.values.tolist(), top.indices.tolist())]


def recommend(model_file: str | Path, history: list[str], top_k: int = 10, unknown_items: str = "skip",
              exclude_history: bool = True, verbose: bool = False) -> list[Recommendation]:
    """``Recommender(model_file, verbose=verbose).recommend(...)``: one call, one load."""
    return Recommender(model_file, verbose=verbose).recommend(history, top_k, unknown_items, exclude_history)


# RecBole's console handler, where a Recommender set up the process's logging: later ones set its level too.
_console: logging.Handler | None = None


def _init_logging(model_file: str | Path, config_overrides: dict | None, verbose: bool) -> bool:
    """RecBole's logging for a saved run, the console (stderr) from warnings up unless ``verbose``; ``True``
    where the logging is a Recommender's (set up here, now or by an earlier Recommender).

    Set up only where the process has no logging (no handler on the root logger); otherwise RecBole's
    ``init_logger`` adds nothing either, and the handlers in place keep their levels. RecBole's ``init_logger``
    runs here first, on the saved config, so that the one in ``load_data_and_model`` finds logging set up and
    the log file gets every record, as a normal run writes it.
    """
    global _console
    root = getLogger()
    if not root.handlers:
        config = _saved_config(model_file)
        for key, value in (config_overrides or {}).items():
            config[key] = value
        init_logger(config)
        _console = next((handler for handler in root.handlers if type(handler) is logging.StreamHandler), None)
    if _console is None or _console not in root.handlers:
        return False
    _console.setLevel(root.level if verbose else max(root.level, logging.WARNING))
    _console.removeFilter(_not_python_warnings)
    if not verbose:
        _console.addFilter(_not_python_warnings)
    return True


def _not_python_warnings(record: logging.LogRecord) -> bool:
    """Python's warnings (RecBole's pandas FutureWarnings, ...) are for the log file; the console's warnings are
    the run's own (an unknown history item, an item without text)."""
    return record.name != "py.warnings"


@contextmanager
def _python_warnings_logged(enabled: bool):
    """Python's warnings raised inside, under Python's filters, logged (``py.warnings``, as
    ``logging.captureWarnings`` does) instead of printed; nothing changes unless ``enabled``."""
    if not enabled:
        yield
        return
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        for message in caught:
            getLogger("py.warnings").warning(warnings.formatwarning(
                message.message, message.category, message.filename, message.lineno, message.line).rstrip())


def _saved_config(model_file: str | Path):
    """The config of a saved run, read without loading its weights into memory (they are mapped, not read)."""
    try:
        return torch.load(model_file, map_location="cpu", weights_only=False, mmap=True)["config"]
    except RuntimeError:  # a checkpoint in torch's legacy format, which cannot be mapped
        return load_checkpoint(str(model_file))["config"]
