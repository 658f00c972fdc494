"""The package's layers depend one way: checks and errors <- data <- model <- the lookup (``registry``) <- config
and the pipeline, with evaluation shared by models and trainer and importing neither (as RecBole, whose models
never import a trainer); no module-level import cycle, so any module can be the first one imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from recbole.trainer import Trainer

from recbole_diffgm import get_trainer
from recbole_diffgm.trainer import GenerativeTrainer, PluginTrainerMixin

PACKAGE = Path(__file__).parents[1] / "recbole_diffgm"
# A module under the first path may not import a module under any of the others.
PIPELINE = ("recbole_diffgm.config", "recbole_diffgm.registry", "recbole_diffgm.utils", "recbole_diffgm.quick_start",
            "recbole_diffgm.benchmark", "recbole_diffgm.tuning", "recbole_diffgm.tuned_benchmark", "recbole_diffgm.cli",
            "recbole_diffgm.recommend")
FORBIDDEN = {
    "model": ("recbole_diffgm.trainer", *PIPELINE),
    "data": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.evaluation", *PIPELINE),
    "evaluation.py": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.data", *PIPELINE),
    "trainer": ("recbole_diffgm.model", "recbole_diffgm.data", *PIPELINE),
    # The lookup imports models and trainers by name, on first use: at load time it needs none of the package.
    "registry.py": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.data", *PIPELINE),
    "checks.py": ("recbole_diffgm.model", "recbole_diffgm.trainer", "recbole_diffgm.data", *PIPELINE),
    "files.py": ("recbole_diffgm",),  # the standard library only
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that importing ``path`` imports at once: its module-level imports (not those inside a
    function), each with the packages above it, whose ``__init__`` runs first, less the packages above ``path``
    itself (under way already when it loads)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                names |= {alias.name for alias in inner.names}
            elif isinstance(inner, ast.ImportFrom) and inner.module:
                names |= {inner.module} | {f"{inner.module}.{alias.name}" for alias in inner.names}
    found = set()
    for name in names:
        parts = name.split(".")
        found |= {".".join(parts[:end]) for end in range(2, len(parts) + 1)} & modules
    own = module_name(path).split(".")
    return found - {".".join(own[:end]) for end in range(1, len(own) + 1)}


def test_no_module_imports_itself_through_others():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py") if path.parent.name != "__pycache__"}
    graph = {name: load_time_imports(path, set(paths)) for name, path in paths.items() if name != "recbole_diffgm"}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:  # depth first: a module met again on its own trail is a cycle
        state[name] = "open"
        for imported in sorted(graph.get(name, ())):
            assert state.get(imported) != "open", f"import cycle: {' -> '.join(trail + [name, imported])}"
            if imported not in state:
                visit(imported, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_any_module_can_be_imported_first():
    # Each module imported into a fresh copy of the package (its modules dropped from sys.modules, torch and RecBole
    # kept): an order-dependent cycle fails with ImportError for the module that comes first.
    names = sorted(module_name(path) for path in PACKAGE.rglob("*.py") if path.parent.name != "__pycache__")
    script = f"""
import importlib, sys
import recbole_diffgm
for name in {names!r}:
    for loaded in [module for module in sys.modules if module.startswith("recbole_diffgm")]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
