"""recbole-diffgm: diffusion-based generative recommendation (DiffGM) and its baselines for RecBole."""

from recbole_diffgm import compat  # noqa: F401  (first: fixes RecBole on today's numpy before it is imported)
from recbole_diffgm.config import Config
from recbole_diffgm.errors import InputError
from recbole_diffgm.quick_start import (
    build_item_sids,
    evaluate_saved_model,
    load_data_and_model,
    run_recbole_diffgm,
)
from recbole_diffgm.recommend import Recommendation, Recommender, recommend
from recbole_diffgm.utils import create_dataset, get_model, get_trainer

__all__ = [
    "Config",
    "InputError",
    "Recommendation",
    "Recommender",
    "build_item_sids",
    "create_dataset",
    "evaluate_saved_model",
    "get_model",
    "get_trainer",
    "load_data_and_model",
    "recommend",
    "run_recbole_diffgm",
]
__version__ = "0.1.0"
