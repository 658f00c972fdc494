"""A fair comparison: every model searched with the same Ray Tune budget, then the winners benchmarked.

For each model: a search over its space file (``<params_dir>/<Model>.test``, by default the installed
``properties/hyper/``), with the same budget (trials, and optionally a time limit), whose first trial is the
model's default config; selection on validation only. Then ``run_benchmark`` runs every model with its best
config over the seeds. ``<dataset>-tuning.md`` shows the equal treatment: budget, trials run, time used, the
search space, default and best validation score, and each tuned key's default and chosen value. A search
that finished with the same budget and space is reused, so re-running an interrupted command resumes it.
"""

from __future__ import annotations

import hashlib
import json
from logging import getLogger
from pathlib import Path

from recbole_diffgm.benchmark import run_benchmark
from recbole_diffgm.config import PROPERTIES_DIR
from recbole_diffgm.errors import InputError
from recbole_diffgm.tuning import require_ray, run_search


def parse_budget(text: str) -> tuple[int, float | None]:
    """``"8"``: 8 trials per model; ``"8,30m"`` (``s``, ``m``, ``h``): and no new trial after 30 minutes."""
    trials, _, limit = text.partition(",")
    try:
        count = int(trials)
        seconds = None if not limit else float(limit[:-1]) * {"s": 1, "m": 60, "h": 3600}[limit[-1]]
    except (ValueError, KeyError, IndexError):
        raise InputError(f"tune_budget '{text}': give trials per model, optionally with a time limit, e.g. 8 or "
                         "8,30m (units s, m, h)") from None
    if count < 1 or (seconds is not None and seconds <= 0):
        raise InputError(f"tune_budget '{text}': the trials and the time limit must be positive")
    return count, seconds


def run_tuned_benchmark(models: list[str], dataset: str, budget: str, config_file_list=None, config_dict=None,
                        seeds=(None,), results_dir: str = "results", command: str | None = None,
                        params_dir: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float | None = None,
                        ray_address: str | None = None, max_concurrent_trials: int | None = None,
                        max_failures: int = 2) -> list[dict]:
    """Tune every model with ``budget`` (``parse_budget``), then benchmark the tuned configs over ``seeds``."""
    trials, seconds = parse_budget(budget)
    require_ray()
    out = Path(results_dir)
    spaces = {model: Path(params_dir or PROPERTIES_DIR / "hyper") / f"{model}.test" for model in models}
    missing = [str(path) for path in spaces.values() if not path.is_file()]
    if missing:
        raise InputError(f"no search space for {', '.join(missing)}; write one in RecBole's hyper.test format")
    searches = {}
    for model in models:
        signature = {"budget": budget, "space": hashlib.sha256(spaces[model].read_bytes()).hexdigest(),
                     "config_files": config_file_list, "config": config_dict}
        done_file = out / f"{dataset}-tuning" / model / "search.json"
        if done_file.is_file() and json.loads(done_file.read_text())["signature"] == signature:
            getLogger().info(f"tuned benchmark: {model}'s search with this budget is done; reusing it")
            searches[model] = json.loads(done_file.read_text())["summary"]
            continue
        getLogger().info(f"tuned benchmark: searching {model} ({trials} trials"
                         + (f", {seconds:.0f} s" if seconds else "") + f") over {spaces[model]}")
        searches[model] = run_search(model, dataset, str(spaces[model]), config_file_list, config_dict, trials,
                                     str(out / f"{dataset}-tuning"), model, ray_address, cpus_per_trial,
                                     gpus_per_trial, time_budget_s=seconds, try_defaults=True,
                                     max_concurrent_trials=max_concurrent_trials, max_failures=max_failures)
        done_file.write_text(json.dumps({"signature": signature, "summary": searches[model]}, indent=2))
    rows = run_benchmark(models, dataset, config_file_list, config_dict, seeds, results_dir, command,
                         model_overrides={model: search["best_params"] for model, search in searches.items()})
    _write_tuning_table(searches, spaces, budget, dataset, out)
    return rows


def _write_tuning_table(searches: dict[str, dict], spaces: dict[str, Path], budget: str, dataset: str, out: Path):
    lines = [f"# {dataset}: the tuning behind each benchmark row", "",
             (f"Budget per model: `{budget}` (trials[,time limit]); the first trial of every search is the model's "
             "default config; selection on validation only, the test is run by the benchmark."), "",
             ("| model | trials run | failed | search time | default valid | best valid | tuned values (default → best) "
             "| search space |"), "|---|---|---|---|---|---|---|---|"]
    for model, search in searches.items():
        defaults = search["default_params"] or {}
        moves = ", ".join(f"{key}: {defaults.get(key)} → {value}" for key, value in search["best_params"].items())
        default_score = search["default_valid_score"]
        lines.append(f"| {model} | {search['trials']} | {search['failed']} | {search['seconds'] / 60:.1f} min | "
                     f"{'–' if default_score is None else f'{default_score:.4f}'} | {search['best_valid_score']:.4f} | "
                     f"{moves} | `{spaces[model].name}` |")
    lines += ["", "Search spaces:", ""]
    for model, path in spaces.items():
        lines += [f"`{model}` ({path.name}):", "", "```", path.read_text().strip(), "```", ""]
    (out / f"{dataset}-tuning.md").write_text("\n".join(lines))
