"""The DiffGM ablation's report: the trained variants of a benchmark run store, and their selected checkpoints
tested again with other scoring modes.

    OMP_NUM_THREADS=1 python run_recbole_diffgm.py --config_files=benchmarks/diffgm-ablation-cpu.yaml \\
        --results_dir=results/diffgm-ablation --dataset=amazon-beauty --seeds=2020 --model=DiffGM@DiffGM-cpu,...
    OMP_NUM_THREADS=1 python benchmarks/diffgm_ablation.py --runs=results/diffgm-ablation/amazon-beauty-runs \\
        --mode='CPD beam 32:decode_mode=cpd,test_beam_size=32' --out=results/diffgm-ablation.md

The first table is the run store's (``run.json``: what each row was selected and tested with, epochs, CPU time per
epoch). Each ``--mode LABEL:key=value,...`` tests every row's selected checkpoint again on the test split with those
config keys (``quick_start.evaluate_saved_model``; ``eval_level=sid`` gives the DiffGRM release's SID-level
metrics); ``--mode_rows`` limits a mode to some rows. A mode's result is kept in ``rescore.json`` beside the run,
keyed by the run and the keys, so an interrupted report resumes and a finished one is not recomputed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from recbole_diffgm.benchmark import machine_description
from recbole_diffgm.files import write_json_atomically


def parse_mode(text: str) -> tuple[str, dict]:
    """``LABEL:key=value,key=value`` -> ``(LABEL, {key: value})``, each value read as YAML (``32`` is a number)."""
    label, _, assignments = text.partition(":")
    overrides = {}
    for assignment in filter(None, assignments.split(",")):
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --mode '{text}': '{assignment}' is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    if not label.strip() or not overrides:
        raise SystemExit(f"error: --mode '{text}': give LABEL:key=value,...")
    return label.strip(), overrides


def finished_runs(runs: Path) -> list[tuple[str, dict]]:
    """``(run folder name, run.json)`` of every finished run under ``runs``, in the order they finished."""
    found = [(folder.name, json.loads((folder / "run.json").read_text())) for folder in runs.iterdir()
             if (folder / "run.json").is_file()]
    return sorted(found, key=lambda item: (runs / item[0] / "run.json").stat().st_mtime)


def rescore(run_dir: Path, run: dict, label: str, overrides: dict) -> dict:
    """The selected checkpoint of ``run`` tested with ``overrides``: metrics and milliseconds per test user,
    from ``rescore.json`` when this run and these keys were scored before."""
    from recbole_diffgm.quick_start import evaluate_saved_model

    cache_file = run_dir / "rescore.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = json.dumps({"run": run["key"], "overrides": overrides}, sort_keys=True)
    if key not in cache:
        model_file = run["result"]["model_file"]
        if not Path(model_file).is_file():
            raise SystemExit(f"error: {run_dir}: its checkpoint {model_file} is gone; run the benchmark row again")
        start = time.perf_counter()
        metrics = evaluate_saved_model(model_file, {**overrides, "show_progress": False}, split="test")
        seconds = time.perf_counter() - start
        cache[key] = {"label": label, "metrics": dict(metrics), "ms_per_user": 1000 * seconds / run["result"]["test_users"]}
        write_json_atomically(cache, cache_file)
    return cache[key]


def training_table(runs: list[tuple[str, dict]]) -> list[str]:
    lines = ["| row | epochs run | best epoch | stopped by | CPU-min per epoch | valid N@10 | test R@10 | test N@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs:
        result = run["result"]
        per_epoch = result["train_cpu_seconds"] / 60 / result["epochs_run"]
        lines.append(f"| {name} | {result['epochs_run']} | {result['best_epoch']} | {result['stop_reason']} | "
                     f"{per_epoch:.1f} | {result['best_valid_score']:.4f} | {result['test_result']['recall@10']:.4f} | "
                     f"{result['test_result']['ndcg@10']:.4f} |")
    return lines


def scoring_table(runs: list[tuple[str, dict]], scored: dict[str, dict[str, dict]], labels: list[str]) -> list[str]:
    """One line per scored row: how it was trained, its test as configured, then R@10, N@10 and ms per user of
    each mode (a column group per mode, SID level named in its header)."""
    def level(label: str) -> str:
        sid = any("sid_ndcg@10" in by_label[label]["metrics"] for by_label in scored.values() if label in by_label)
        return "SID" if sid else "item"

    header = ["row", "trained on", "as configured", "R@10", "N@10"]
    for label in labels:
        header += [f"{label}: R@10 ({level(label)})", "N@10", "ms per user"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs:
        if name not in scored:
            continue
        config, test = run["result"]["config"], run["result"]["test_result"]
        views = "all-masked view" if config.get("ocn_views") == 1 else "OCN views"
        cells = [name, views, config.get("decode_mode", "–"), f"{test['recall@10']:.4f}", f"{test['ndcg@10']:.4f}"]
        for label in labels:
            score = scored[name].get(label)
            if score is None:
                cells += ["–", "–", "–"]
                continue
            prefix = "sid_" if level(label) == "SID" else ""
            cells += [f"{score['metrics'][prefix + 'recall@10']:.4f}", f"{score['metrics'][prefix + 'ndcg@10']:.4f}",
                      f"{score['ms_per_user']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, type=Path, help="a benchmark run store, <results_dir>/<dataset>-runs")
    parser.add_argument("--mode", action="append", default=[], help="LABEL:key=value,... (repeatable)")
    parser.add_argument("--mode_rows", default=None, help="comma-separated run folders the modes test (default: all)")
    parser.add_argument("--out", required=True, type=Path, help="the markdown report")
    args = parser.parse_args()
    modes = [parse_mode(text) for text in args.mode]
    if not args.runs.is_dir():
        raise SystemExit(f"error: --runs {args.runs}: no such folder")
    runs = finished_runs(args.runs)
    chosen = set(args.mode_rows.split(",")) if args.mode_rows else {name for name, _ in runs}
    unknown = chosen - {name for name, _ in runs}
    if unknown:
        raise SystemExit(f"error: --mode_rows: no finished run {', '.join(sorted(unknown))} in {args.runs}")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    scored: dict[str, dict[str, dict]] = {}
    for label, overrides in modes:
        for name, run in runs:
            if name in chosen:
                scored.setdefault(name, {})[label] = rescore(args.runs / name, run, label, overrides)
    command = "python benchmarks/diffgm_ablation.py " + " ".join(
        [f"--runs={args.runs}"] + [f"'--mode={text}'" for text in args.mode]
        + ([f"--mode_rows={args.mode_rows}"] if args.mode_rows else []) + [f"--out={args.out}"])
    lines = [f"# DiffGM ablation: {args.runs}", "", "```bash", command, "```", "",
             (f"Machine: {machine_description()}. Each row trained once (seed in its name) within the budget of its "
              "run's config; selected on item-level validation NDCG@10; tested on every test user."), "",
             "## Trained variants (selection and test as each run was configured)", "", *training_table(runs)]
    if scored:
        labels = [label for label, _ in modes]
        lines += ["", "## The selected checkpoints, tested with other scoring modes", "",
                  *scoring_table(runs, scored, labels)]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
