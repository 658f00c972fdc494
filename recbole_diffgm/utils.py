"""Name lookups for the pipeline: this plugin first, RecBole second.

``get_model`` / ``get_trainer`` / ``create_dataset`` have RecBole's signatures, so RecBole's own models
(SASRec, BERT4Rec, GRU4Rec, ...) run through the same entry points as the plugin's.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pickle
from logging import getLogger
from pathlib import Path

import recbole.data
import recbole.utils
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils.argument_list import dataset_arguments

from recbole_diffgm.data.atomic_files import ensure_dataset, orders_by_file
from recbole_diffgm.data.dataset import FileOrderSequentialDataset
from recbole_diffgm.errors import InputError
from recbole_diffgm.trainer import GenerativeTrainer, PluginTrainerMixin

_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


# This plugin's models: name -> module (imported on first use).
PLUGIN_MODELS = {
    "DiffGM": "recbole_diffgm.model.diffgm",
    "DigitClassifier": "recbole_diffgm.model.digit_classifier",
    "ARGM": "recbole_diffgm.model.argm",
    "TIGER": "recbole_diffgm.model.tiger",
}


def available_models() -> list[str]:
    """Names of every model this plugin can run."""
    names = set(PLUGIN_MODELS)
    for package in _RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except ImportError:  # exlib models need xgboost / lightgbm, which are optional
            continue
        names.update(
            name
            for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender)
        )
    return sorted(names, key=str.lower)


def get_model(model_name: str) -> type[AbstractRecommender]:
    """The model class called ``model_name`` (RecBole's spelling, e.g. ``SASRec``)."""
    if model_name in PLUGIN_MODELS:
        return getattr(importlib.import_module(PLUGIN_MODELS[model_name]), model_name)
    # As recbole.utils.get_model, but a package whose optional dependency is missing (exlib models
    # need xgboost / lightgbm) is skipped instead of failing every lookup.
    for package in _RECBOLE_MODEL_PACKAGES:
        module_path = f"recbole.model.{package}.{model_name.lower()}"
        try:
            found = importlib.util.find_spec(module_path) is not None
        except ImportError:
            continue
        if found and hasattr(module := importlib.import_module(module_path), model_name):
            return getattr(module, model_name)
    raise InputError(f"unknown model '{model_name}'; available models: {', '.join(available_models())}")


@functools.cache
def _with_plugin_mixin(trainer_class: type) -> type:
    return type(trainer_class.__name__, (PluginTrainerMixin, trainer_class), {})


def get_trainer(model_type, model_name: str) -> type:
    """``GenerativeTrainer`` for the models that decode semantic IDs, else RecBole's trainer for the model, with
    this plugin's ``PluginTrainerMixin`` (resumable, budgeted, atomic checkpoints that reload on torch >= 2.6)."""
    from recbole_diffgm.model.generative import (
        GenerativeRecommender,  # not at the top: a cycle
    )

    if issubclass(get_model(model_name), GenerativeRecommender):
        return GenerativeTrainer
    return _with_plugin_mixin(recbole.utils.get_trainer(model_type, model_name))


def create_dataset(config, dataset_class=None, sid_catalogue=None):
    """The dataset for ``config``, after checking (or preparing) its atomic files.

    ``dataset_class`` defaults to the model's ``dataset_class`` attribute (this plugin's models that read
    semantic IDs), else RecBole's choice. As in RecBole, a dataset saved with ``save_dataset`` is loaded
    back when its settings, and here also its semantic IDs, are still those of ``config``. ``sid_catalogue``:
    the SIDs a trained model knows, kept for its items and extended to new ones (``SIDDataset``).
    """
    ensure_dataset(config)
    try:
        return _build_dataset(config, dataset_class, sid_catalogue)
    except ValueError as error:
        if "Some feat is empty" not in str(error):  # RecBole's words for "filtering left nothing"
            raise
        filters = {key: config[key] for key in ("user_inter_num_interval", "item_inter_num_interval", "val_interval",
                                                  "rm_dup_inter") if config[key] is not None}
        raise InputError(f"dataset '{config['dataset']}': no interactions are left after filtering "
                         f"({', '.join(f'{key} {value}' for key, value in filters.items())}); loosen these settings"
                         ) from None


def _file_order_class(config) -> type:
    """A RecBole model's dataset class for an ``.inter`` without a time column: RecBole's ``SequentialDataset``
    ordered by the file. RecBole's own dataset classes of single models (DIEN, KSR, ...) need the time column."""
    if hasattr(recbole.data.dataset, f"{config['model']}Dataset"):
        inter_file = Path(config["data_path"]) / f"{config['dataset']}.inter"
        raise InputError(f"{inter_file}: no column '{config['TIME_FIELD']}'; {config['model']} needs the time of "
                         "each interaction: set TIME_FIELD to the time column")
    return FileOrderSequentialDataset


def _build_dataset(config, dataset_class, sid_catalogue):
    dataset_class = dataset_class or getattr(get_model(config["model"]), "dataset_class", None)
    if dataset_class is None and orders_by_file(config):
        dataset_class = _file_order_class(config)
    if dataset_class is None:
        return recbole.data.create_dataset(config)
    if sid_catalogue is not None:
        return dataset_class(config, sid_catalogue)
    default_file = Path(config["checkpoint_dir"]) / f"{config['dataset']}-{dataset_class.__name__}.pth"
    saved_file = Path(config["dataset_save_path"] or default_file)
    if saved_file.is_file():
        try:
            with saved_file.open("rb") as file:
                dataset = pickle.load(file)
        except (pickle.UnpicklingError, EOFError) as error:
            getLogger().warning(f"{saved_file}: unreadable saved dataset ({error}); building the dataset again")
        else:
            settings = dataset_arguments + ["seed", "repeatable"]
            if all(config[key] == dataset.config[key] for key in settings) and dataset.is_current(config):
                getLogger().info(f"Load filtered dataset from: [{saved_file}]")
                return dataset
    dataset = dataset_class(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset
