"""RecBole's ``Config``, layered with this plugin's property files and model registry.

Priority is RecBole's, from lowest to highest: RecBole's own ``properties/`` yaml, this plugin's
``properties/overall.yaml``, ``properties/generative.yaml``, ``properties/model/<Model>.yaml`` and ``properties/dataset/<dataset>.yaml``,
then ``config_file_list``, ``config_dict`` and ``--key=value`` on the command line.
"""

from __future__ import annotations

from pathlib import Path

import recbole.config
import torch

from recbole_diffgm.utils import get_model

_PACKAGE_DIR = Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    # A regular install copies the top-level folder into the package (setup.py's package_dir);
    # a source checkout or an editable install reads it from the top of the source tree.
    installed = _PACKAGE_DIR / name
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / name


PROPERTIES_DIR = _resource_dir("properties")
DATASET_DIR = _resource_dir("dataset")


class Config(recbole.config.Config):
    """``recbole.config.Config`` that also knows the plugin's models and default property files.

    ``data_path`` defaults to the plugin's ``dataset/`` folder (with the bundled amazon-beauty), wherever
    the package is installed; set ``data_path`` to use another folder.
    """

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
        model_file = PROPERTIES_DIR / "model" / f"{model}.yaml"
        if model_file.is_file():
            self._update_internal_config_dict(model_file)
        dataset_file = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
        if dataset_file.is_file():
            dataset_keys = self._update_internal_config_dict(dataset_file) or {}
            # RecBole compares these keys to decide whether a saved dataset is still valid.
            self.parameters["Dataset"] += [k for k in dataset_keys if k not in self.parameters["Dataset"]]

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
