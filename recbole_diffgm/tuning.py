"""Hyperparameter search with Ray Tune, driven by RecBole's ``hyper.test`` search-space files.

Each trial is a normal ``run_recbole_diffgm`` without the test: it reports the validation score after every
validation (so ASHA can stop bad trials early), writes its checkpoints in its own trial folder, and sees only
the GPUs Ray gave it. The best trial is chosen on validation alone; only its checkpoint is then tested.
The search writes, in ``<tune_dir>/<name>/``: ``best.yaml`` (the best parameters, for ``--config_files``),
``trials.md`` / ``trials.csv`` (every trial: parameters, best validation score, epochs, error) and
``best.json`` (validation and test metrics of the best trial). Re-running the same command resumes an
interrupted search.

Ray is imported only here, never on the training path.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import time
from logging import getLogger
from pathlib import Path
from types import SimpleNamespace

import yaml

from recbole_diffgm import compat
from recbole_diffgm.errors import InputError

SPACE_FORMS = {  # RecBole's hyper.test forms (and randint): form -> its values
    "choice": "a Python list of values",
    "uniform": "low,high",
    "quniform": "low,high,q",
    "loguniform": "low,high (natural-log bounds, as RecBole/hyperopt: exp(uniform(low, high)))",
    "randint": "low,high (integers, high excluded)",
}


def parse_hyper_file(path: str | Path) -> dict[str, tuple[str, list]]:
    """Read a ``hyper.test`` file: ``<parameter> <form> <values>`` per line, ``#`` comments and blank lines
    allowed. Returns ``{parameter: (form, values)}``; a bad line raises ``InputError`` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"search-space file not found: {path}")
    space = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            name, form, values = _parse_line(line)
            if name in space:
                raise ValueError(f"parameter '{name}' is defined twice")
        except ValueError as problem:
            raise InputError(f"{path}, line {number}: {problem}: '{raw.strip()}'") from None
        space[name] = (form, values)
    if not space:
        raise InputError(f"{path}: no search parameters")
    return space


def _parse_line(line: str) -> tuple[str, str, list]:
    parts = line.split(None, 2)
    if len(parts) < 3:
        raise ValueError("expected '<parameter> <form> <values>'")
    name, form, text = parts
    if form not in SPACE_FORMS:
        raise ValueError(f"unknown form '{form}' (use {', '.join(SPACE_FORMS)})")
    if form == "choice":
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, list) or not values:
            raise ValueError("choice needs a non-empty Python list, e.g. [64,128]")
        return name, form, values
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise ValueError(f"{form} needs numbers: {SPACE_FORMS[form]}") from None
    if len(values) != (3 if form.startswith("q") else 2):
        raise ValueError(f"{form} needs {SPACE_FORMS[form]}")
    if values[0] >= values[1]:
        raise ValueError(f"{form} needs low < high")
    if form.startswith("q") and values[2] <= 0:
        raise ValueError(f"{form} needs q > 0")
    if form == "randint" and not all(value.is_integer() for value in values):
        raise ValueError("randint needs integers")
    return name, form, values


def ray_search_space(space: dict[str, tuple[str, list]]) -> dict:
    """``parse_hyper_file``'s result as Ray Tune domains."""
    from ray import tune

    def domain(form: str, values: list):
        if form == "choice":
            return tune.choice(values)
        if form == "uniform":
            return tune.uniform(*values)
        if form == "quniform":
            return tune.quniform(*values)
        if form == "loguniform":
            return tune.loguniform(math.exp(values[0]), math.exp(values[1]))
        return tune.randint(int(values[0]), int(values[1]))

    return {name: domain(form, values) for name, (form, values) in space.items()}


def _trial(params: dict, model: str, dataset: str, config_file_list, config_dict: dict, bigger: bool) -> None:
    """One trial, inside a Ray worker: train with ``params`` and report every validation."""
    import torch

    from recbole_diffgm.quick_start import run_recbole_diffgm

    session = _trial_session()
    trial_dir = Path(session.get_trial_dir())
    cpus = int(session.get_trial_resources().required_resources.get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    overrides = {
        **config_dict,
        **params,
        "checkpoint_dir": str(trial_dir / "checkpoints"),  # RecBole names checkpoints to the second
        # Ray sets CUDA_VISIBLE_DEVICES to this trial's GPUs; RecBole would reset it to gpu_id ("0").
        "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "show_progress": False,
    }
    best = {"score": None}

    def report(epoch: int, valid_score: float) -> None:
        better = best["score"] is None or (valid_score > best["score"]) == bigger
        best["score"] = valid_score if better else best["score"]
        session.report({"valid_score": valid_score, "best_valid_score": best["score"], "epoch": epoch})

    # A retried trial (its node or the driver died) continues from its own resume state, written each epoch.
    resume_files = sorted((trial_dir / "checkpoints").glob("*-resume.pth"))
    _record_attempt(trial_dir, resume_files[-1] if resume_files else None)
    if resume_files:
        result = run_recbole_diffgm(resume_file=str(resume_files[-1]), callback_fn=report, test=False)
    else:
        result = run_recbole_diffgm(model, dataset, config_file_list, overrides, callback_fn=report, test=False)
    session.report({"best_valid_score": result["best_valid_score"], "done_training": True})


ATTEMPTS_FILE = "attempts.jsonl"  # in each trial's folder: a line per attempt, where it ran and where it resumed


def _record_attempt(trial_dir: Path, resume_file: Path | None) -> None:
    import ray

    from recbole_diffgm.compat import load_checkpoint

    attempt = {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
               "pid": os.getpid(), "started": time.time(),
               "resumed_at_epoch": load_checkpoint(resume_file)["epoch"] + 1 if resume_file else None}
    trial_dir.mkdir(parents=True, exist_ok=True)
    with (trial_dir / ATTEMPTS_FILE).open("a") as handle:  # one short appended line: whole or absent
        handle.write(json.dumps(attempt) + "\n")


def _attempts(trial_dir: str | None) -> list[dict]:
    path = Path(trial_dir or "") / ATTEMPTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if trial_dir and path.is_file() else []


def _history(attempts: list[dict]) -> str:
    """``ip/node → ip/node (resumed at epoch 3)``: where each attempt of a trial ran."""
    return " → ".join(f"{attempt['ip']}/{attempt['node'][:8]}" + (f" (resumed at epoch {attempt['resumed_at_epoch']})"
                                             if attempt["resumed_at_epoch"] is not None else "")
                      for attempt in attempts)


def _cluster_nodes() -> list[dict]:
    """Every node the cluster has had in this search (dead ones too), for ``trials.md``."""
    import ray

    return [{"node": node["NodeID"][:8], "ip": node["NodeManagerAddress"],
             "CPUs": node["Resources"].get("CPU", 0), "GPUs": node["Resources"].get("GPU", 0),
             "head": "node:__internal_head__" in node["Resources"], "alive": node["Alive"]} for node in ray.nodes()]


def _trial_session():
    """The running trial's API on the Ray that ``setup.py`` installs for this Python: ``ray.tune.get_context()`` and
    ``ray.tune.report`` on newer Ray (2.60 on Python 3.12+, where ``ray.air.session`` is deprecated), ``ray.air.session``
    on Ray 2.6.3 (Python <= 3.11, which has no ``tune.get_context``). Either gives ``get_trial_dir()``,
    ``get_trial_resources()`` and ``report(metrics)``."""
    from ray import tune

    if hasattr(tune, "get_context"):
        context = tune.get_context()
        # The trial's folder in storage_path (Result.path), not the node-local working folder that get_trial_dir()
        # gives there: a retried trial (on another node, or after a restore) finds its resume state in it.
        trial_dir = context.get_storage().trial_fs_path
        return SimpleNamespace(get_trial_dir=lambda: trial_dir, get_trial_resources=context.get_trial_resources,
                               report=tune.report)
    from ray.air import session

    return session


def _result_folder(result) -> str | None:
    """A trial's folder (where ``_trial`` wrote its checkpoints): ``Result.log_dir`` on Ray 2.6 (its trial dir is
    the local one), ``Result.path`` on newer Ray (the trial dir is the one in ``storage_path``; no ``log_dir``)."""
    return getattr(result, "log_dir", None) or getattr(result, "path", None)


def _run_configs():
    """``(RunConfig, FailureConfig, SyncConfig)``: ``ray.tune``'s on newer Ray (``ray.air``'s are deprecated there),
    ``ray.air``'s on Ray 2.6, which has no others."""
    from ray import tune

    if hasattr(tune, "RunConfig") and hasattr(tune, "FailureConfig"):
        return tune.RunConfig, tune.FailureConfig, tune.SyncConfig
    from ray import air

    return air.RunConfig, air.FailureConfig, tune.SyncConfig


def require_ray() -> None:
    """The search modes need Ray Tune; training, evaluation, the benchmark and recommending never import it."""
    try:
        import ray.tune  # noqa: F401
    except ImportError as error:
        raise InputError(f"the search modes (--params_file, --tune_budget) need Ray Tune, which cannot be imported "
                         f"here ({error}): pip install 'ray[tune]'") from None


def run_search(model: str, dataset: str, params_file: str, config_file_list=None, config_dict=None,
               num_samples: int = 10, tune_dir: str = "tune", name: str | None = None,
               ray_address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float | None = None,
               early_stopping: bool = True, time_budget_s: float | None = None, try_defaults: bool = False,
               max_concurrent_trials: int | None = None, max_failures: int = 2) -> dict:
    """Search ``model``'s hyperparameters on ``dataset`` over ``params_file`` with Ray Tune.

    ``num_samples`` trials at most, ``max_concurrent_trials`` at a time (default: as many as the resources
    allow), and no new trial after ``time_budget_s`` seconds when given. With
    ``try_defaults`` the first trial is the model's default config (its values of the searched keys), so the
    search shows how far it moved from there. A trial whose worker dies (its node lost, say) is retried up to
    ``max_failures`` times, from its last epoch (its resume state in its folder); on a cluster (``ray_address``),
    ``tune_dir`` must be storage that every node sees at the same path (NFS), where each trial writes its folder.

    Returns ``{"best_params", "best_valid_score", "test_result", "folder", "trials", "failed", "seconds",
    "default_params", "default_valid_score"}``. Trials that ASHA stopped early compete with their best
    checkpoint so far.
    """
    compat.restore_numpy_aliases()
    require_ray()
    import ray

    from recbole_diffgm.config import Config
    from recbole_diffgm.quick_start import evaluate_saved_model

    logger = getLogger()
    space = parse_hyper_file(params_file)
    # Trials run in their own folders: relative paths would not be found there.
    config_file_list = [str(Path(file).resolve()) for file in config_file_list] if config_file_list else None
    config_dict = dict(config_dict or {})
    if config_dict.get("data_path"):
        config_dict["data_path"] = str(Path(config_dict["data_path"]).resolve())
    config = Config(model, dataset, config_file_list, config_dict)  # bad names or files fail here, not in a trial
    # Trials share one SID/embedding cache (theirs would otherwise sit in each trial's checkpoint folder).
    config_dict["sid_cache_dir"] = str(Path(config["sid_cache_dir"] or Path(config["checkpoint_dir"]) / "sid_cache").resolve())
    mode = "max" if config["valid_metric_bigger"] else "min"
    name = name or f"{config['model']}-{dataset}"
    folder = Path(tune_dir).resolve() / name
    if gpus_per_trial is None:
        import torch

        gpus_per_trial = 1 if torch.cuda.is_available() else 0
    for resource, amount in (("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial)):
        if amount < 0 or (amount > 1 and amount != int(amount)):
            raise InputError(f"{resource} {amount}: Ray takes a fraction up to 1 or a whole number")

    defaults = {key: config[key] for key in space} if try_defaults else None
    # "local": a Ray of this search's own; without it ray.init joins the last cluster `ray start` made here, or
    # fails on its leftover address file when that cluster is gone.
    ray.init(address=ray_address or "local", ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": compat.ray_worker_setup})
    start = time.perf_counter()
    try:
        grid = _tuner(model, dataset, config_file_list, config_dict, space, mode, num_samples, folder, name,
                      cpus_per_trial, gpus_per_trial, early_stopping, time_budget_s, defaults,
                      max_concurrent_trials, max_failures).fit()
        nodes = _cluster_nodes()
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - start

    trials = []
    for result in grid:
        metrics = result.metrics or {}
        # RecBole keeps one checkpoint per run, rewritten at each better validation: the trial's best.
        folder_of_trial = _result_folder(result)
        checkpoints = sorted(Path(folder_of_trial).glob("checkpoints/*.pth")) if folder_of_trial else []
        status = "error" if result.error else "finished" if metrics.get("done_training") else "stopped early"
        attempts = _attempts(folder_of_trial)
        trials.append({"trial": Path(folder_of_trial).name if folder_of_trial else "",
                       **{key: (result.config or {}).get(key) for key in space},
                       "best_valid_score": metrics.get("best_valid_score"),
                       "evaluations": metrics.get("training_iteration"),
                       "status": status,
                       "attempts": len(attempts),
                       "ran on": _history(attempts),
                       "error": str(result.error).splitlines()[0][:200] if result.error else "",
                       "model_file": str(checkpoints[-1]) if checkpoints else None})
    _write_trials(trials, list(space), folder, nodes)
    ranked = [trial for trial in trials if trial["model_file"] and trial["best_valid_score"] is not None]
    if not ranked:
        raise InputError(f"no trial reached a validation; see {folder / 'trials.md'}")
    best = (max if mode == "max" else min)(ranked, key=lambda trial: trial["best_valid_score"])
    best_params = {key: best[key] for key in space}
    (folder / "best.yaml").write_text(yaml.safe_dump(best_params, sort_keys=True))
    test_result = evaluate_saved_model(best["model_file"])  # the test, for the selected trial alone
    default_trial = next((trial for trial in trials if defaults and all(trial[key] == defaults[key] for key in space)),
                         None)
    summary = {"best_params": best_params, "best_valid_score": best["best_valid_score"],
               "test_result": dict(test_result), "folder": str(folder), "trials": len(trials),
               "failed": sum(bool(trial["error"]) for trial in trials), "seconds": seconds,
               "default_params": defaults, "default_valid_score": default_trial and default_trial["best_valid_score"]}
    (folder / "best.json").write_text(json.dumps(summary, indent=2))
    logger.info(f"best of {len(trials)} trials (validation {best['best_valid_score']:.4f}): {best_params}; "
                f"test {dict(test_result)}; written to {folder}")
    return summary


def _tuner(model, dataset, config_file_list, config_dict, space, mode, num_samples, folder: Path, name: str,
           cpus_per_trial, gpus_per_trial, early_stopping, time_budget_s=None, defaults=None,
           max_concurrent_trials=None, max_failures=2):
    """A new Ray Tune ``Tuner``, or the interrupted one in ``folder``, resumed."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(
        tune.with_parameters(_trial, model=model, dataset=dataset, config_file_list=config_file_list,
                             config_dict=config_dict, bigger=mode == "max"),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if tune.Tuner.can_restore(folder):
        getLogger().info(f"resuming the search in {folder}")
        return tune.Tuner.restore(str(folder), trainable, resume_errored=True)
    scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=1) if early_stopping else None
    RunConfig, FailureConfig, SyncConfig = _run_configs()
    # Trials write to storage_path, shared by every node: Ray 2.6's copying of trial folders to the head is off.
    sync = {"sync_config": SyncConfig(syncer=None)} if "syncer" in SyncConfig.__dataclass_fields__ else {}
    return tune.Tuner(
        trainable, param_space=ray_search_space(space),
        # The generator limits concurrency itself: Tune ignores its own max_concurrent_trials beside a generator.
        tune_config=tune.TuneConfig(metric="best_valid_score", mode=mode, num_samples=num_samples, scheduler=scheduler,
                                    time_budget_s=time_budget_s,
                                    search_alg=BasicVariantGenerator(points_to_evaluate=[defaults] if defaults else None,
                                                                     max_concurrent=max_concurrent_trials or 0)),
        run_config=RunConfig(name=name, storage_path=str(folder.parent), verbose=1, **sync,
                             failure_config=FailureConfig(max_failures=max_failures, fail_fast=False)))


def _write_trials(trials: list[dict], parameters: list[str], folder: Path, nodes: list[dict] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = ["trial", *parameters, "best_valid_score", "evaluations", "status", "attempts", "ran on", "error"]
    with (folder / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(trials)
    ranked = sorted(trials, key=lambda trial: (trial["best_valid_score"] is None, -(trial["best_valid_score"] or 0)))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in ranked:
        cells = [_format(trial[key]) for key in header]
        lines.append("| " + " | ".join(cells) + " |")
    retried = [trial for trial in trials if trial["attempts"] > 1]
    notes = [f"- {trial['trial']}: {trial['attempts']} attempts ({trial['ran on']}); {trial['status']}, counted once"
             for trial in retried]
    node_lines = ["| node | address | CPUs | GPUs | head | alive (as the cluster saw it at the end) |",
                  "|---|---|---|---|---|---|",
                  *(f"| {node['node']} | {node['ip']} | {node['CPUs']:g} | {node['GPUs']:g} | {'yes' if node['head'] else ''}"
                    f" | {'yes' if node['alive'] else 'no'} |" for node in nodes)]
    (folder / "trials.md").write_text(
        "# Trials (validation only; the test is run for the best trial alone)\n\n" + "\n".join(lines) + "\n"
        + ("\nRetried (a worker died; the trial resumed from its last epoch):\n\n" + "\n".join(notes) + "\n"
           if notes else "")
        + ("\n## Nodes of the cluster\n\n" + "\n".join(node_lines) + "\n" if nodes else ""))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "/")
