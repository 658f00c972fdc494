"""Pipeline helpers in RecBole's plugin shape: ``create_dataset`` here, ``get_model`` / ``get_trainer`` from the
lookup (``registry``), so RecBole's own models (SASRec, BERT4Rec, GRU4Rec, ...) run through the same entry points
as the plugin's.
"""

from __future__ import annotations

import pickle
from logging import getLogger
from pathlib import Path

import recbole.data
from recbole.utils import ModelType
from recbole.utils.argument_list import dataset_arguments

from recbole_diffgm.data.atomic_files import ensure_dataset, orders_by_file
from recbole_diffgm.data.cold_items import with_cold_items
from recbole_diffgm.data.dataset import FileOrderSequentialDataset
from recbole_diffgm.errors import InputError
from recbole_diffgm.registry import available_models, get_model, get_trainer

__all__ = ["available_models", "create_dataset", "get_model", "get_trainer"]


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


def _recbole_dataset_class(config) -> type:
    """The dataset class RecBole's ``create_dataset`` would build for ``config``'s model."""
    classes = recbole.data.dataset
    if hasattr(classes, f"{config['model']}Dataset"):
        return getattr(classes, f"{config['model']}Dataset")
    return classes.SequentialDataset if config["MODEL_TYPE"] == ModelType.SEQUENTIAL else (
        classes.KnowledgeBasedDataset if config["MODEL_TYPE"] == ModelType.KNOWLEDGE else classes.Dataset)


def _build_dataset(config, dataset_class, sid_catalogue):
    dataset_class = dataset_class or getattr(get_model(config["model"]), "dataset_class", None)
    if dataset_class is None and orders_by_file(config):
        dataset_class = _file_order_class(config)
    if dataset_class is None and config["cold_items"]:  # RecBole's class, with the protocol on its splits
        dataset_class = with_cold_items(_recbole_dataset_class(config))
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
