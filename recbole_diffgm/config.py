"""RecBole's ``Config``, layered with this plugin's property files and model registry.

Priority is RecBole's, from lowest to highest: RecBole's own ``properties/`` yaml, this plugin's
``properties/overall.yaml``, ``properties/generative.yaml``, ``properties/model/<Class>.yaml`` of the model's base
classes, then of the model (``model_property_files``), ``properties/dataset/<dataset>.yaml``, then
``config_file_list``, ``config_dict`` and ``--key=value`` on the command line.
"""

from __future__ import annotations

from pathlib import Path

import recbole.config
import torch
import yaml
from recbole.utils import ModelType

from recbole_diffgm.data.atomic_files import default_load_col
from recbole_diffgm.data.item_text import default_text_fields, field_labels
from recbole_diffgm.errors import InputError
from recbole_diffgm.registry import get_model

_PACKAGE_DIR = Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    # A regular install copies the top-level folder into the package (setup.py's package_dir);
    # a source checkout or an editable install reads it from the top of the source tree.
    installed = _PACKAGE_DIR / name
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / name


PROPERTIES_DIR = _resource_dir("properties")
DATASET_DIR = _resource_dir("dataset")
RECBOLE_DATASET_PROPERTIES = Path(recbole.config.__file__).resolve().parents[1] / "properties" / "dataset"


def model_property_files(model_class: type) -> list[Path]:
    """``properties/model/<Class>.yaml`` of the model's class and of its base classes, bases first, so that a
    model's file holds only what differs from its base's (ARGM's from ``SIDTransformer.yaml``)."""
    files = (PROPERTIES_DIR / "model" / f"{cls.__name__}.yaml" for cls in reversed(model_class.__mro__))
    return [file for file in files if file.is_file()]


def _file_keys(path: Path) -> set[str]:
    """The keys a property file sets (none when there is no such file)."""
    return set(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else set()


class Config(recbole.config.Config):
    """``recbole.config.Config`` that also knows the plugin's models and default property files.

    ``data_path`` defaults to the plugin's ``dataset/`` folder (with the bundled amazon-beauty), wherever
    the package is installed; set ``data_path`` to use another folder.

    A dataset of one's own with no property file gets ``load_col`` and ``item_text_fields`` fitted to its atomic
    files (``_fit_defaults_to_files``); ``resolved_defaults`` says what was chosen, for the log.
    """

    def _load_config_files(self, file_list):
        missing = [str(file) for file in file_list or [] if not Path(file).is_file()]
        if missing:
            raise InputError(f"config file not found: {', '.join(missing)}")
        return super()._load_config_files(file_list)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = str(DATASET_DIR)
        self._update_internal_config_dict(PROPERTIES_DIR / "overall.yaml")
        self._update_internal_config_dict(PROPERTIES_DIR / "generative.yaml")
        # Keys set for this model or dataset, or by the user: everything but the generic defaults.
        recbole_dataset_file = RECBOLE_DATASET_PROPERTIES / f"{dataset}.yaml"
        self.configured_keys = set(self.external_config_dict) | _file_keys(recbole_dataset_file)
        for model_file in model_property_files(model_class):
            self.configured_keys |= set(self._update_internal_config_dict(model_file) or {})
        dataset_file = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
        if dataset_file.is_file():
            dataset_keys = self._update_internal_config_dict(dataset_file) or {}
            self.configured_keys |= set(dataset_keys)
            # RecBole compares these keys to decide whether a saved dataset is still valid.
            self.parameters["Dataset"] += [k for k in dataset_keys if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        super()._set_default_parameters()  # data_path is the dataset's folder from here on
        self.resolved_defaults = self._fit_defaults_to_files()

    def _fit_defaults_to_files(self) -> dict[str, str]:
        """Fit the generic defaults that name columns to the dataset's own files, and say what they became.

        RecBole's ``load_col`` loads only the ids, and a sequential model needs the time; the default
        ``item_text_fields`` are the Amazon ones, which a dataset of one's own may lack. Keys set by the user or
        by a model or dataset property file are kept as they are (a column they name must exist). Files not
        there yet (an Amazon category made on first use) keep the defaults.
        """
        config, notes = self.final_config_dict, {}
        folder, name = Path(config["data_path"]), config["dataset"]
        inter_file, item_file = folder / f"{name}.inter", folder / f"{name}.item"
        fit_load_col = {"load_col", "unload_col"}.isdisjoint(self.configured_keys)
        if fit_load_col and config["MODEL_TYPE"] == ModelType.SEQUENTIAL and inter_file.is_file():
            config["load_col"] = default_load_col(config, inter_file, item_file)
            notes["load_col"] = ("load_col not set: loading " + "; ".join(
                f"{', '.join(fields)} of {name}.{suffix}" for suffix, fields in config["load_col"].items()))
        if "item_text_fields" not in self.configured_keys and item_file.is_file():
            defaults = field_labels(config["item_text_fields"])
            config["item_text_fields"] = default_text_fields(defaults, item_file, config["field_separator"])
            left_out = [field for field in defaults if field not in config["item_text_fields"]]
            notes["item_text_fields"] = (
                f"item_text_fields not set: the item text is {', '.join(config['item_text_fields'])} of {name}.item"
                + (f" (the default fields it has; it has no {', '.join(left_out)})" if left_out else ""))
        return notes

    def join_process_group(self, distributed: dict) -> None:
        """This config of a DDP run, loaded from its resume state, as one rank of the resumed run: ``distributed``
        (``local_rank``, ``world_size``, ``ip``, ``port``, ``nproc``, ``offset``) replaces the stored rank's, and
        the process joins the group as a freshly built ``Config`` does."""
        self.final_config_dict.update(distributed)
        self._init_device()

    def _init_device(self):
        # RecBole's DDP joins the processes with NCCL on CUDA only; without a GPU they join with Gloo on the CPU.
        if "local_rank" not in self.final_config_dict or torch.cuda.is_available():
            return super()._init_device()
        config = self.final_config_dict
        config["gpu_id"] = ",".join(map(str, config["gpu_id"])) if isinstance(config["gpu_id"], tuple) else str(config["gpu_id"])
        torch.distributed.init_process_group(
            backend="gloo", rank=config["local_rank"] + config["offset"], world_size=config["world_size"],
            init_method=f"tcp://{config['ip']}:{config['port']}")
        config["device"] = torch.device("cpu")
        config["single_spec"] = False
