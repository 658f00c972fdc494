"""The model and trainer lookup: this plugin's models first, RecBole's second.

``get_model`` / ``get_trainer`` have RecBole's signatures, so RecBole's own models (SASRec, BERT4Rec, GRU4Rec,
...) run through the same entry points as the plugin's. Models and trainers are imported on first use, by name,
as RecBole imports them: this module imports nothing of the package at load time, so every layer can look a
model up (``config.Config`` reads a model's property files) without an import cycle.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import recbole.utils
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_diffgm.errors import InputError

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
    "TextSASRec": "recbole_diffgm.model.text_sasrec",
    "DiffGMHybrid": "recbole_diffgm.model.hybrid",
    "DigitClassifierHybrid": "recbole_diffgm.model.hybrid",
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
def _with_plugin_mixin(mixin: type, trainer_class: type) -> type:
    return type(trainer_class.__name__, (mixin, trainer_class), {})


def generates_sids(model_name: str) -> bool:
    """Whether the model decodes semantic IDs (``GenerativeRecommender.generates_sids``)."""
    return getattr(get_model(model_name), "generates_sids", False)


def reads_item_text(model_name: str) -> bool:
    """Whether the model reads its items' texts (a SID model, or ``reads_item_text``, e.g. ``TextSASRec``): its runs
    depend on the text settings (``item_text_fields``, ``sent_emb_model``)."""
    model = get_model(model_name)
    return getattr(model, "generates_sids", False) or getattr(model, "reads_item_text", False)


def get_trainer(model_type, model_name: str) -> type:
    """``GenerativeTrainer`` for the models that decode semantic IDs, else RecBole's trainer for the model, with
    this plugin's ``PluginTrainerMixin`` (resumable, budgeted, atomic checkpoints that reload on torch >= 2.6)."""
    trainer = importlib.import_module("recbole_diffgm.trainer")
    if generates_sids(model_name):
        return trainer.GenerativeTrainer
    return _with_plugin_mixin(trainer.PluginTrainerMixin, recbole.utils.get_trainer(model_type, model_name))
