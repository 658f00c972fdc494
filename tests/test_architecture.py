"""The package's layers depend one way: data <- model <- trainer lookup, with evaluation shared by models and
trainer and importing neither (as RecBole, whose models never import a trainer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from recbole.trainer import Trainer

from recbole_diffgm import get_trainer
from recbole_diffgm.trainer import GenerativeTrainer, PluginTrainerMixin

PACKAGE = Path(__file__).parents[1] / "recbole_diffgm"
# A module under the first path may not import a module under any of the others.
FORBIDDEN = {
    "model": ("recbole_diffgm.trainer", "recbole_diffgm.quick_start", "recbole_diffgm.benchmark",
              "recbole_diffgm.tuning", "recbole_diffgm.cli", "recbole_diffgm.recommend"),
    "data": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.quick_start",
             "recbole_diffgm.evaluation"),
    "evaluation.py": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.data"),
    "trainer": ("recbole_diffgm.model", "recbole_diffgm.quick_start", "recbole_diffgm.data"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_does_not_import_the_layers_above_it(layer):
    files = [PACKAGE / layer] if layer.endswith(".py") else sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    for path in files:
        wrong = {name for name in imported_modules(path) for above in FORBIDDEN[layer]
                 if name == above or name.startswith(above + ".")}
        assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_the_trainer_is_chosen_in_the_lookup():
    for model in ("DiffGM", "ARGM", "TIGER"):
        assert get_trainer(None, model) is GenerativeTrainer
    sasrec_trainer = get_trainer(None, "SASRec")
    assert issubclass(sasrec_trainer, PluginTrainerMixin) and issubclass(sasrec_trainer, Trainer)
    assert not issubclass(sasrec_trainer, GenerativeTrainer)
