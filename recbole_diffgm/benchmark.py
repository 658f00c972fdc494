"""Benchmark mode: several models, one split, one table, reusable and resumable run by run.

A row is a model, optionally with recipes (``SASRec@SASRec-strong``: ``properties/recipes/SASRec-strong.yaml`` or
any yaml path; ``DiffGM@DiffGM-cpu+sid-disambiguate``: two), applied before the shared config files, which hold
what every row shares (the budget). Every (row, seed) run is a normal ``run_recbole_diffgm`` in
its own process, so one model's crash (or its memory) cannot touch the others; its row then carries the error.
The dataset, split, metrics, selection rule and every command-line setting are the same for all rows.

Each run lives in ``<results_dir>/<dataset>-runs/<row>-seed<seed>/``: ``run.json`` (its key and result) once it
has finished, its checkpoints meanwhile. The key is a digest of the run's resolved config, the data files and
the version of what the code computes (``RUN_CODE_VERSION``): a run whose ``run.json`` has the same key is reused
instead of retrained, and a killed run with the same key resumes from its resume state, so a long benchmark can be
completed in parts, across refactors that leave every result as it was.

Generative models are tested twice from the same checkpoint: item-level (the default, comparable with every
other row) and SID-level (the DiffGRM release's protocol, labelled ``sid_``); each states its SIDs.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import yaml

from recbole_diffgm.errors import InputError
from recbole_diffgm.files import replaced_atomically, write_csv_atomically, write_json_atomically, write_text_atomically

QUALITY = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
CASES = ("in-set", "cold")  # the cold-start protocol's kinds of test case (quick_start.evaluate_by_case)
# Config keys that say where a run writes or runs, not what it computes: left out of its key.
_PLACE_KEYS = {"data_path", "checkpoint_dir", "sid_cache_dir", "dataset_save_path", "dataloaders_save_path",
               "show_progress", "state", "gpu_id", "device", "use_gpu", "log_wandb", "wandb_project", "nproc",
               "world_size", "offset", "ip", "port", "local_rank", "single_spec", "eval_memory_check"}


@dataclass(frozen=True)
class Row:
    """One row of the table: ``model``, or ``model@recipe`` (``model@a+b``: several) with recipe yaml files that
    come before the shared config files, so that the shared settings (the budget) are the same for every row."""

    label: str
    model: str
    recipes: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Row:
        model, _, recipes = spec.partition("@")
        return cls(spec, model, tuple(recipe_file(name) for name in recipes.split("+") if name))

    @property
    def file_name(self) -> str:
        return self.label.replace("@", "-").replace("+", "-").replace("/", "_")

    def config_files(self, shared: list[str] | None) -> list[str] | None:
        return [*map(str, self.recipes), *(shared or [])] or None


def recipe_file(name: str) -> Path:
    """A recipe: a yaml path, or the name of one in ``properties/recipes/``."""
    from recbole_diffgm.config import PROPERTIES_DIR

    if Path(name).is_file():
        return Path(name)
    installed = PROPERTIES_DIR / "recipes" / f"{name}.yaml"
    if installed.is_file():
        return installed
    available = sorted(path.stem for path in (PROPERTIES_DIR / "recipes").glob("*.yaml"))
    raise InputError(f"recipe '{name}' is neither a yaml file nor one of properties/recipes: {', '.join(available)}")


def run_benchmark(models: list[str], dataset: str, config_file_list=None, config_dict=None, seeds=(None,),
                  results_dir: str = "results", command: str | None = None,
                  model_overrides: dict[str, dict] | None = None, seeded_rows: list[str] | None = None,
                  report_only: bool = False) -> list[dict]:
    """Train and test every row (``Row.parse``) with every seed (with ``seeded_rows``, only those rows; the others
    with the first seed), reusing finished runs and resuming killed ones (``report_only``: nothing is trained, a run
    without a finished result shows as not run yet);
    write ``<results_dir>/<dataset>.md`` (``command`` at its top), ``.csv``, ``.png`` (quality against inference
    time), ``-curves.png`` (validation NDCG@10 against training time), ``-curves/`` and ``-configs/``.
    ``model_overrides``: settings of one model only (e.g. its tuned hyperparameters), over everything else.
    Returns one row per model (the mean over seeds)."""
    logger = getLogger()
    out = Path(results_dir)
    for folder in ("configs", "curves", "runs"):
        (out / f"{dataset}-{folder}").mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    rows = []
    for row in map(Row.parse, models):
        runs = []
        for seed in seeds if seeded_rows is None or row.label in seeded_rows else seeds[:1]:
            overrides = (dict(config_dict or {}) | (model_overrides or {}).get(row.model, {})
                         | ({} if seed is None else {"seed": seed}))
            name = row.file_name + ("" if seed is None else f"-seed{seed}")
            files = row.config_files(config_file_list)
            logger.info(f"benchmark: {row.label} on {dataset}" + ("" if seed is None else f", seed {seed}"))
            results = context.SimpleQueue()
            process = context.Process(target=_run_one, args=(row.model, dataset, files, overrides,
                                                              str(out / f"{dataset}-runs" / name), results,
                                                              report_only, os.getpid()))
            process.start()
            process.join()
            run = results.get() if not results.empty() else {"error": f"the run's process died (exit code {process.exitcode})"}
            if "config" in run:
                (out / f"{dataset}-configs" / f"{name}.yaml").write_text(yaml.safe_dump(run["config"], sort_keys=True))
            if run.get("curve"):
                write_csv_atomically(run["curve"], out / f"{dataset}-curves" / f"{name}.csv")
            runs.append(run)
        rows.append(_summarise(row.label, runs))
        _write_tables(rows, dataset, out, command)  # after every model: an interrupted benchmark keeps its rows
        _plot(rows, dataset, out)
        _plot_curves(rows, dataset, out)
        _plot_cases(rows, dataset, out)
    return rows


def _run_one(model, dataset, config_file_list, config_dict, run_dir, results, report_only=False,
             benchmark_pid=None) -> None:
    """One run in a fresh process: the finished run of the same key, else a resumed or new one; the result with
    peak memory, SIDs and config, or the error."""
    if benchmark_pid is not None:
        _exit_with(benchmark_pid)
    try:
        sys.argv = sys.argv[:1]  # spawn hands the parent's command line over, which RecBole's Config would read
        result = _reuse_or_run(model, dataset, config_file_list, config_dict, Path(run_dir), report_only)
        results.put(result)
    except BaseException as error:  # noqa: BLE001  (any failure becomes the row's error)
        getLogger().error(traceback.format_exc())
        results.put({"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]})


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _exit_with(parent_pid: int, period_s: float = 0.5) -> None:
    """End this process with the benchmark that started it, however that was killed (SIGKILL too): an orphaned
    run would go on writing into the run folder that the benchmark, run again, resumes from (a tiny run can even
    finish, discarding the resume state, within one period of polling)."""
    if sys.platform == "linux":  # the kernel kills this process with its parent: no epoch ends in between
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:  # elsewhere, and in case the parent was gone before prctl
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-benchmark", daemon=True).start()


def _reuse_or_run(model, dataset, config_file_list, config_dict, run_dir: Path, report_only: bool = False) -> dict:
    import torch

    from recbole_diffgm.compat import load_checkpoint
    from recbole_diffgm.config import Config
    from recbole_diffgm.quick_start import evaluate_saved_model, run_recbole_diffgm
    from recbole_diffgm.registry import generates_sids

    run_dir.mkdir(parents=True, exist_ok=True)
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    generative = generates_sids(model)
    key = run_key(config, generative)
    # Checkpoints in the run's folder; the SID cache stays where the config puts it, shared by every run.
    config_dict = {**config_dict, "checkpoint_dir": str(run_dir),
                   "sid_cache_dir": str(config["sid_cache_dir"] or Path(config["checkpoint_dir"]) / "sid_cache")}
    finished = run_dir / "run.json"
    if finished.is_file():
        stored = json.loads(finished.read_text())
        if stored.get("key") == key:
            getLogger().info(f"benchmark: {model} reused from {finished} (same config, data and code version)")
            return {**stored["result"], "reused": True}
    if report_only:
        return {"error": "not run yet (no finished run of this config, data and code version)"}
    started, tested = run_dir / "started.json", run_dir / "tested.json"
    resume_files = sorted(run_dir.glob("*-resume.pth"))
    same_run = started.is_file() and json.loads(started.read_text()).get("key") == key
    if not same_run:  # another config's leftovers: never resumed, never reused
        for stale in [*run_dir.glob("*.pth"), finished, tested]:
            stale.unlink(missing_ok=True)
        resume_files = []
    write_json_atomically({"key": key}, started)
    if same_run and tested.is_file():  # trained and tested: only what follows the test is left
        getLogger().info(f"benchmark: {model} was trained and tested before it was stopped ({tested})")
        result = json.loads(tested.read_text())["result"]
    else:
        if resume_files:
            getLogger().info(f"benchmark: {model} resumes from {resume_files[-1]}")
            # Resumed where this checkout keeps the data, which may not be where the run began.
            here = {**config_dict, "data_path": str(Path(config["data_path"]).parent)}
            result = run_recbole_diffgm(config_dict=here, resume_file=str(resume_files[-1]))
        else:
            result = run_recbole_diffgm(model, dataset, config_file_list, config_dict)
        # The run's resume state is gone once it is tested: what follows (a generative model's SID-level test,
        # as long as the item-level one) must not retrain it if it is stopped.
        result["device"] = device_description(str(result["device"]))
        result = json.loads(json.dumps(_plain(result)))
        write_json_atomically({"key": key, "result": result}, tested)
    checkpoint = load_checkpoint(result["model_file"])
    if generative:
        result["sids"] = sid_summary(checkpoint["config"], checkpoint["other_parameter"]["sid_catalogue"]["codes"])
        if sid_level_repeats_item_level(checkpoint["config"], result["sids"]):
            getLogger().info(f"benchmark: {model}: every item has a SID of its own, so its SID-level test is its "
                             "item-level one (not decoded again)")
            result["sid_test_result"] = {f"sid_{metric}": value for metric, value in result["test_result"].items()}
        else:
            result["sid_test_result"] = dict(evaluate_saved_model(result["model_file"], {"eval_level": "sid"}))
    # The peak of this process: training's too unless the run was trained in an earlier one.
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["config"] = _plain(checkpoint["config"].final_config_dict)
    result["test_result"] = dict(result["test_result"])
    result["best_valid_result"] = dict(result["best_valid_result"] or {})
    result = json.loads(json.dumps(_plain(result)))
    write_json_atomically({"key": key, "result": result}, finished)
    tested.unlink()
    return result


# The version of what a run computes, by the kind of model. Bump one when a change alters what its runs compute
# (weights, scores, metrics): tests/test_recipes.py compares small runs of every benchmark row with the fingerprints
# recorded for these versions (tests/data/run-fingerprints.json) and fails until the version is bumped. A refactor
# that keeps every fingerprint keeps the finished runs of a long benchmark reusable.
# text: this plugin's dense text models (TextSASRec). recbole and text 2: RecBole's sequential models train without
# the autograd anomaly detection its sine.py turns on (compat.turn_off_anomaly_detection): the same epochs, in 0.6x
# the CPU time, so a time budget holds more of them.
RUN_CODE_VERSION = {"recbole": 2, "generative": 1, "text": 2}
# Parts of the generative code whose change altered what only some runs compute, each with its version and the runs
# it concerns: a run's code version names the parts its config uses (``code_version``), so a finished run that uses
# none of them stays reusable, and test_recipes.py holds each row to the fingerprint of its own code version.
PART_VERSIONS = {
    # CPD's beam keeps distinct catalogue SIDs only (decoding.SIDPatterns): every DiffGM run that decodes with it.
    "cpd-beam": (2, lambda config: config["model"] == "DiffGM" and config["decode_mode"] == "cpd"),
    # Items that share a SID are ordered by their count over every training interaction.
    "tie-break": (2, lambda config: config["sid_collision"] == "keep"),
    # The dense head is trained at every position of a per-position row.
    "dense-head": (2, lambda config: bool(config["dense_head"]) and bool(config["train_per_position"])),
    # The cosine spans every epoch when validation starts late.
    "schedule": (2, lambda config: config["warmup_steps"] is not None and bool(config["eval_start_epoch"])),
    # Losses over the catalogue leave the cold items out (cold_items): the catalogue loss, a dense head, TextSASRec.
    "cold-negatives": (2, lambda config: bool(config["cold_items"]) and bool(
        config["catalogue_loss_weight"] or config["dense_head"] or config["model"] == "TextSASRec")),
}
_ATOMIC_SUFFIXES = ("inter", "user", "item", "kg", "link", "net")  # RecBole's atomic files


# Keys added after runs were finished, with the value that computes what those runs computed: a run whose key holds
# that value digests as if the key did not exist, so adding a key with its "off" value keeps every finished run.
_ADDED_KEYS = {"cold_items": 0, "cold_items_seed": 2020, "catalogue_loss_samples": 0}
_ABSENT = object()


def run_key(config, generative: bool) -> str:
    """Digest of what determines a run's result: its resolved config (every property file's effect included; less
    where it writes, and for a model that reads no item text less ``properties/generative.yaml``'s keys), the
    dataset's atomic
    files (and for a generative model its shipped SIDs), RecBole's version and the code version (``code_version``)."""
    from importlib.metadata import version

    from recbole_diffgm.config import PROPERTIES_DIR
    from recbole_diffgm.registry import reads_item_text

    ignored = set(_PLACE_KEYS)
    if not (generative or reads_item_text(config["model"])):  # keys only the models that read item text read
        ignored |= set(yaml.safe_load((PROPERTIES_DIR / "generative.yaml").read_text()))
    settings = {key: value for key, value in _plain(config.final_config_dict).items() if key not in ignored
                and _ADDED_KEYS.get(key, _ABSENT) != value}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(f"recbole {version('recbole')}".encode())
    kind = "generative" if generative else "recbole"
    digest.update(f"{kind} code version {code_version(config, generative)}".encode())
    folder, name = Path(config["data_path"]), config["dataset"]
    data_files = [folder / f"{name}.{suffix}" for suffix in _ATOMIC_SUFFIXES]
    if generative:
        data_files += folder.glob(f"{name}.sids-*.npz")
    for path in sorted(path for path in data_files if path.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def code_version(config, generative: bool) -> str:
    """The version of the code a run computes with: ``RUN_CODE_VERSION`` of its kind, then each changed part of
    ``PART_VERSIONS`` that its config uses (``1+cpd-beam2``; a text model's: ``cold-negatives`` alone)."""
    if not generative:
        from recbole_diffgm.registry import reads_item_text

        if not reads_item_text(config["model"]):
            return str(RUN_CODE_VERSION["recbole"])
        version, uses = PART_VERSIONS["cold-negatives"]  # the one part of the generative code TextSASRec shares
        return str(RUN_CODE_VERSION["text"]) + (f"+cold-negatives{version}" if uses(config) else "")
    parts = [f"+{part}{version}" for part, (version, uses) in PART_VERSIONS.items() if uses(config)]
    return str(RUN_CODE_VERSION["generative"]) + "".join(parts)


def sid_summary(config, codes) -> dict:
    """What a generative row's SIDs are: quantizer, digits, collision policy and the share of items that share a
    SID before and after the policy."""
    import numpy as np

    def share(rows: np.ndarray) -> float:
        _, group, size = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
        return float((size[group.reshape(-1)] > 1).mean())

    n_digit = int(config["n_digit"])
    return {"quantizer": config["sid_quantizer"], "n_digit": n_digit, "codebook_size": int(config["codebook_size"]),
            "digits": int(codes.shape[1]), "policy": config["sid_collision"],
            "shared_before": share(codes[:, :n_digit]), "shared": share(codes)}


def sid_level_repeats_item_level(config, sids: dict) -> bool:
    """Whether a row's SID-level test (``eval_level: sid``) would repeat its item-level one: every item has a SID
    of its own (a hit on the target's SID is a hit on the target), both levels list the beam's SIDs by their best
    beam's score (``dedup_strategy: simple``, no dense head's score added at item level), and the test's list of
    SIDs (the beam; one-pass scoring's re-scored top ``rerank_size``) is at least as long as the largest cut-off.
    tests/test_sid_level.py holds the two levels equal where this says so."""
    settings = config.final_config_dict
    listed = settings.get("rerank_size") if settings.get("decode_mode") == "one_pass" else None
    return (sids["shared"] == 0 and settings.get("dedup_strategy", "simple") == "simple"
            and not settings.get("dense_head") and (listed or settings["test_beam_size"]) >= max(settings["topk"]))


def _sid_cell(sids: dict | None) -> str:
    if not sids:
        return ""
    extra = sids["digits"] - sids["n_digit"]
    text = (f"{sids['quantizer']} {sids['n_digit']}×{sids['codebook_size']}" + (f" +{extra}" if extra else "")
            + f", {sids['policy']}: {100 * sids['shared']:.1f}% items share a SID")
    return text + (f" ({100 * sids['shared_before']:.1f}% before)" if sids["shared"] != sids["shared_before"] else "")


def cpu_model() -> str:
    """The CPU's model name: Linux's ``/proc/cpuinfo``, else what Python can tell (macOS, an ARM Linux without a
    "model name"). The one place that reads it, for every report that names its machine."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_description(device: str) -> str:
    """A run's device, for its row of the table: the GPU's name, or the CPU's model and the threads torch uses."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def machine_description() -> str:
    """The machine a benchmark script measured on, for its report: the CPU and its cores, the threads of torch and
    of faiss (both compute on the CPU), the GPU."""
    import faiss
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), {gpu}")


def _plain(config: dict) -> dict:
    """The yaml-safe part of a RecBole config (numbers, strings, lists, dicts), for the row's config file."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return {key: plain(value) for key, value in config.items()}


def selection_rule(config: dict) -> str:
    """How a run chose its checkpoint, in words."""
    weights = config.get("valid_metric_weights")
    if weights:
        return "validation " + " + ".join(f"{weight}·{metric}" for metric, weight in weights.items())
    return f"validation {config.get('valid_metric')}"


def budget_rule(config: dict) -> str:
    """A run's training budget, in words."""
    parts = [f"at most {config.get('epochs')} epochs", f"patience {config.get('stopping_step')} validations"]
    if config.get("time_budget") is not None:
        parts.append(f"time budget {config['time_budget']} ({config.get('time_budget_clock')} clock)")
    return ", ".join(parts)


def _summarise(label: str, runs: list[dict]) -> dict:
    done = [run for run in runs if "error" not in run]
    errors = [run["error"] for run in runs if "error" in run]
    row = {"model": label, "seeds": len(done), "error": "; ".join(dict.fromkeys(errors)) + (
               f" ({len(errors)} of {len(runs)} seeds)" if len(runs) > 1 and errors else ""),
           "curves": [run.get("curve", []) for run in done], "reused": sum(bool(run.get("reused")) for run in done)}
    # The test metrics, SID-level ones (sid_), and the cold-start protocol's cases (cold_, in-set_)
    results = {"": lambda run: run.get("test_result") or {},
               "sid_": lambda run: {name.removeprefix("sid_"): value for name, value in
                                    (run.get("sid_test_result") or {}).items()},
               **{f"{case}_": (lambda run, case=case: (run.get("test_result_by_case") or {}).get(case, {}))
                  for case in CASES}}
    for prefix, result in results.items():
        for metric in QUALITY:
            values = [result(run)[metric] for run in done if metric in result(run)]
            if values:
                row[prefix + metric] = statistics.mean(values)
                row[prefix + metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for field in ("train_seconds", "train_cpu_seconds", "valid_seconds", "epochs_run", "parameters", "peak_memory_mb",
                  "peak_gpu_memory_mb"):
        values = [run[field] for run in done if run.get(field) is not None]
        if values:
            row[field] = statistics.mean(values)
    if done:
        row["inference_ms_per_user"] = statistics.mean(1000 * run["test_seconds"] / run["test_users"] for run in done)
        row["device"] = "; ".join(dict.fromkeys(run["device"] for run in done))  # every machine, in seed order
        row["best_epochs"] = ", ".join(str(run.get("best_epoch")) for run in done)
        row["stopped_by"] = ", ".join(sorted({str(run.get("stop_reason")) for run in done}))
        row["sids"] = _sid_cell(done[0].get("sids"))
        row["selection"] = {selection_rule(run["config"]) for run in done}
        row["budget"] = {budget_rule(run["config"]) for run in done}
    return row


def _cell(row: dict, metric: str) -> str:
    if metric not in row:
        return "–"
    std = row.get(metric + "_std", 0.0)
    return f"{row[metric]:.4f}" + (f" ± {std:.4f}" if row["seeds"] > 1 else "")


def _number(row: dict, field: str, pattern: str, scale: float = 1) -> str:
    return pattern.format(row[field] / scale) if field in row else "–"


def _write_tables(rows: list[dict], dataset: str, out: Path, command: str | None) -> None:
    cases = [case for case in CASES if any(f"{case}_{QUALITY[0]}" in row for row in rows)]  # cold_items runs only
    columns = [*QUALITY, *(f"sid_{m}" for m in QUALITY), *(f"{case}_{m}" for case in cases for m in QUALITY)]
    selections = set().union(*(row.get("selection", set()) for row in rows))
    budgets = set().union(*(row.get("budget", set()) for row in rows))
    per_row = len(selections) > 1 or len(budgets) > 1
    header = ["model", *columns, "SIDs", "epochs run", "best epoch", "stopped by", "train min", "train CPU-min", "valid min",
              "inference ms/user", "parameters", "peak RAM MB", "peak GPU MB", "device", "seeds", "reused",
              *(["selection", "budget"] if per_row else []), "config", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with replaced_atomically(out / f"{dataset}.csv") as partial, partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = [row["model"], *(_cell(row, m) for m in columns), row.get("sids", ""),
                     _number(row, "epochs_run", "{:.0f}"), row.get("best_epochs", "–"), row.get("stopped_by", "–"),
                     _number(row, "train_seconds", "{:.1f}", 60), _number(row, "train_cpu_seconds", "{:.1f}", 60),
                     _number(row, "valid_seconds", "{:.1f}", 60),
                     _number(row, "inference_ms_per_user", "{:.2f}"), _number(row, "parameters", "{:,.0f}"),
                     _number(row, "peak_memory_mb", "{:,.0f}"), _number(row, "peak_gpu_memory_mb", "{:,.0f}"),
                     row.get("device", "–"), str(row["seeds"]), str(row["reused"]),
                     *([" / ".join(sorted(row.get("selection", ()))), " / ".join(sorted(row.get("budget", ())))]
                       if per_row else []),
                     f"{dataset}-configs/{Row.parse(row['model']).file_name if '@' in row['model'] else row['model']}*.yaml",
                     row["error"] or ""]
            writer.writerow(cells)
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    rule = ("Rows differ in selection or budget: see the columns." if per_row else
            f"Every row: checkpoint selected on {next(iter(selections), 'validation')}; "
            f"{next(iter(budgets), 'the config epochs')}.")
    write_text_atomically(
        f"# {dataset}: test metrics of the checkpoint selected on validation\n\n"
        + (f"```bash\n{command}\n```\n\n" if command else "") + rule + "\n\n" +
        "Item-level metrics (R@k, N@k) rank every item, the user's history included (RecBole 1.2.1 masks none for a "
        "sequential model, nor does this plugin). `sid_` columns are "
        "SID-level, for the generative models only: the DiffGRM release's protocol (the beam's SIDs by score, SIDs "
        "that no item has and repeats dropped, history not masked; a hit is generating the target's SID); where "
        "every item has a SID of its own the two levels are equal and the SID-level figures are the item-level "
        "test's, not decoded again. SIDs: quantizer, digits × codes (+ a disambiguation digit), collision policy, "
        "items that share their SID. "
        "Mean ± standard deviation over seeds. Training time leaves validation out (valid min); inference: loading the best "
        "checkpoint and scoring every test user, per user. "
        + ("`cold_` and `in-set_` columns: the test cases whose target is a held-out item (cold_items: no training "
           f"row holds it) and the others, each alone; the unprefixed columns are all cases ({dataset}-cases.png: "
           "Recall@10 of both per row). " if cases else "")
        + "Reused: runs taken from an earlier command with the "
        f"same config, data and code version ({dataset}-runs/). Learning curves: {dataset}-curves.png, {dataset}-curves/.\n\n"
        + "\n".join(lines) + "\n", out / f"{dataset}.md")


def _plot(rows: list[dict], dataset: str, out: Path) -> None:
    from matplotlib import pyplot

    figure, axes = _figure()
    for row in rows:
        if "ndcg@10" in row:
            axes.errorbar(row["inference_ms_per_user"], row["ndcg@10"], yerr=row.get("ndcg@10_std", 0), fmt="o")
            axes.annotate(row["model"], (row["inference_ms_per_user"], row["ndcg@10"]), textcoords="offset points",
                          xytext=(5, 5))
    axes.set_xscale("log")
    axes.set_xlabel("inference ms per user (log)")
    axes.set_ylabel("item-level NDCG@10 (test)")
    axes.set_title(dataset)
    figure.tight_layout()
    figure.savefig(out / f"{dataset}.png", dpi=120)
    pyplot.close(figure)


def _plot_cases(rows: list[dict], dataset: str, out: Path, metric: str = "recall@10") -> None:
    """Under ``cold_items``: a pair of bars per row, ``metric`` on the in-set and on the cold test cases (± the
    standard deviation over seeds)."""
    from matplotlib import pyplot

    shown = [row for row in rows if all(f"{case}_{metric}" in row for case in CASES)]
    if not shown:
        return
    figure, axes = _figure()
    width = 0.4
    for offset, case in zip((-width / 2, width / 2), CASES):
        axes.bar([index + offset for index in range(len(shown))], [row[f"{case}_{metric}"] for row in shown], width,
                 yerr=[row.get(f"{case}_{metric}_std", 0.0) for row in shown], label=f"{case} items", capsize=3)
    axes.set_xticks(range(len(shown)), [row["model"] for row in shown], rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(f"item-level {metric} (test)")
    axes.set_title(f"{dataset}: items seen in training and held-out (cold) items")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"{dataset}-cases.png", dpi=120)
    pyplot.close(figure)


def _plot_curves(rows: list[dict], dataset: str, out: Path) -> None:
    """Validation NDCG@10 against training minutes (CPU minutes when the runs were budgeted on the process clock),
    a line per row (one per seed, in the row's colour)."""
    from matplotlib import pyplot

    cpu = any("process clock" in budget for row in rows for budget in row.get("budget", ()))
    figure, axes = _figure()
    for index, row in enumerate(rows):
        colour = f"C{index % 10}"
        for seed, curve in enumerate(row["curves"]):
            points = [p for p in curve if "ndcg@10" in p]
            if points:
                axes.plot([p["train_cpu_seconds" if cpu else "train_seconds"] / 60 for p in points],
                          [p["ndcg@10"] for p in points], color=colour, marker=".", alpha=1 if seed == 0 else 0.5,
                          label=row["model"] if seed == 0 else None)
    axes.set_xlabel(f"training {'CPU ' if cpu else ''}minutes (validation not counted)")
    axes.set_ylabel("item-level NDCG@10 (validation)")
    axes.set_title(f"{dataset}: learning curves")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"{dataset}-curves.png", dpi=120)
    pyplot.close(figure)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7, 4.5))
