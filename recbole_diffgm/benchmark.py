"""Benchmark mode: several models, one split, one table.

Every (model, seed) run is a normal ``run_recbole_diffgm`` in its own process, so one model's crash (or its
memory) cannot touch the others; its row then carries the error. The dataset, split, metrics and every
command-line setting are the same for all rows; each row's full config is written beside the table.
Generative models are tested twice from the same checkpoint: item-level (the default, comparable with
every other row) and SID-level (the DiffGRM paper's protocol, labelled ``sid_``).
"""

from __future__ import annotations

import csv
import multiprocessing
import platform
import resource
import statistics
import traceback
from logging import getLogger
from pathlib import Path

import yaml

QUALITY = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def run_benchmark(models: list[str], dataset: str, config_file_list=None, config_dict=None, seeds=(None,),
                  results_dir: str = "results", command: str | None = None,
                  model_overrides: dict[str, dict] | None = None) -> list[dict]:
    """Train and test every model with every seed; write ``<results_dir>/<dataset>.md`` (``command`` at its
    top), ``.csv``, ``.png`` and ``<results_dir>/<dataset>-configs/``. ``model_overrides``: settings of one
    model only (e.g. its tuned hyperparameters), over everything else. Returns one row per model (the mean
    over seeds)."""
    logger = getLogger()
    out = Path(results_dir)
    (out / f"{dataset}-configs").mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    rows = []
    for model in models:
        runs = []
        for seed in seeds:
            overrides = (dict(config_dict or {}) | (model_overrides or {}).get(model, {})
                         | ({} if seed is None else {"seed": seed}))
            logger.info(f"benchmark: {model} on {dataset}" + ("" if seed is None else f", seed {seed}"))
            results = context.SimpleQueue()
            process = context.Process(target=_run_one, args=(model, dataset, config_file_list, overrides, results))
            process.start()
            process.join()
            run = results.get() if not results.empty() else {"error": f"the run's process died (exit code {process.exitcode})"}
            if "config" in run:
                name = f"{model}" + ("" if seed is None else f"-seed{seed}") + ".yaml"
                (out / f"{dataset}-configs" / name).write_text(yaml.safe_dump(run.pop("config"), sort_keys=True))
            runs.append(run)
        rows.append(_summarise(model, seeds, runs))
        _write_tables(rows, dataset, out, command)  # after every model: an interrupted benchmark keeps its rows
        _plot(rows, dataset, out)
    return rows


def _run_one(model, dataset, config_file_list, config_dict, results) -> None:
    """One run in a fresh process: the result with peak memory and the config, or the error."""
    try:
        import torch

        from recbole_diffgm.compat import load_checkpoint
        from recbole_diffgm.model.generative import GenerativeRecommender
        from recbole_diffgm.quick_start import evaluate_saved_model, run_recbole_diffgm
        from recbole_diffgm.utils import get_model

        result = run_recbole_diffgm(model, dataset, config_file_list, config_dict)
        if result["model_file"] and issubclass(get_model(model), GenerativeRecommender):
            result["sid_test_result"] = evaluate_saved_model(result["model_file"], {"eval_level": "sid"})
        result["device"] = device_description(result["device"])
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if torch.cuda.is_available():
            result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["config"] = _plain(load_checkpoint(result["model_file"])["config"].final_config_dict)
        results.put(result)
    except BaseException as error:  # noqa: BLE001  (any failure becomes the row's error)
        getLogger().error(traceback.format_exc())
        results.put({"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]})


def device_description(device: str) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} threads"


def _plain(config: dict) -> dict:
    """The yaml-safe part of a RecBole config (numbers, strings, lists, dicts), for the row's config file."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return {key: plain(value) for key, value in config.items()}


def _summarise(model: str, seeds, runs: list[dict]) -> dict:
    done = [run for run in runs if "error" not in run]
    row = {"model": model, "seeds": len(done), "error": "; ".join(run["error"] for run in runs if "error" in run)}
    for prefix, key in (("", "test_result"), ("sid_", "sid_test_result")):
        for metric in QUALITY:
            values = [run[key][prefix + metric] for run in done if prefix + metric in run.get(key, {})]
            if values:
                row[prefix + metric] = statistics.mean(values)
                row[prefix + metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for field in ("train_seconds", "parameters", "peak_memory_mb", "peak_gpu_memory_mb"):
        values = [run[field] for run in done if field in run]
        if values:
            row[field] = statistics.mean(values)
    if done:
        row["inference_ms_per_user"] = statistics.mean(1000 * run["test_seconds"] / run["test_users"] for run in done)
        row["device"] = done[0]["device"]
    return row


def _cell(row: dict, metric: str) -> str:
    if metric not in row:
        return "–"
    std = row.get(metric + "_std", 0.0)
    return f"{row[metric]:.4f}" + (f" ± {std:.4f}" if row["seeds"] > 1 else "")


def _write_tables(rows: list[dict], dataset: str, out: Path, command: str | None) -> None:
    columns = [*QUALITY, *(f"sid_{m}" for m in QUALITY)]
    header = ["model", *columns, "train s", "inference ms/user", "parameters", "peak RAM MB", "peak GPU MB",
              "device", "seeds", "config", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (out / f"{dataset}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = [row["model"], *(_cell(row, m) for m in columns),
                     f"{row['train_seconds']:.0f}" if "train_seconds" in row else "–",
                     f"{row['inference_ms_per_user']:.2f}" if "inference_ms_per_user" in row else "–",
                     f"{row['parameters']:,.0f}" if "parameters" in row else "–",
                     f"{row['peak_memory_mb']:,.0f}" if "peak_memory_mb" in row else "–",
                     f"{row['peak_gpu_memory_mb']:,.0f}" if "peak_gpu_memory_mb" in row else "–",
                     row.get("device", "–"), str(row["seeds"]), f"{dataset}-configs/{row['model']}*.yaml",
                     row["error"] or ""]
            writer.writerow(cells)
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    (out / f"{dataset}.md").write_text(
        f"# {dataset}: test metrics of the checkpoint selected on validation\n\n"
        + (f"```bash\n{command}\n```\n\n" if command else "") +
        "Item-level metrics (R@k, N@k) rank every item; `sid_` columns are SID-level (the DiffGRM paper's "
        "protocol: generating the target's semantic ID is a hit), for the generative models only. "
        "Mean ± standard deviation over seeds. Inference: loading the best checkpoint and scoring every "
        "test user, per user.\n\n" + "\n".join(lines) + "\n")


def _plot(rows: list[dict], dataset: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
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
