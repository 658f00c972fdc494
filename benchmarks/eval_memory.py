"""Peak memory of evaluating the largest configuration: paper-size DiffGM, beam 256, amazon-beauty's test users.

    OMP_NUM_THREADS=2 python benchmarks/eval_memory.py --threads=2                      # every test user (~90 min)
    OMP_NUM_THREADS=1 python benchmarks/eval_memory.py --users=512 --eval_batch_size=256 --threads=1   # a prefix

Builds the model of ``--recipe`` (default ``DiffGM-release``: the DiffGRM release's command, SID-level test; the
network is the paper's, ``properties/model/SIDTransformer.yaml``) on the shipped SIDs of ``--dataset``, untrained:
memory depends on the tensors' shapes alone (CPD keeps ``--beam`` beams whatever the weights; no allocation size
reads a score), not on the weights. Then RecBole's test evaluation (``GenerativeTrainer.evaluate``) of the first
``--users`` test users (default all) at ``--eval_batch_size`` and ``test_beam_size --beam``, in this process, with
the kernel's peak-RSS mark (``VmHWM``) reset just before it, read after every batch: the peak against the users
evaluated so far shows whether it plateaus after the first batch (it should: every batch allocates the same
working set and frees it). Against ``recbole_diffgm.trainer.memory``'s estimate of one batch, which the run's
pre-check (``check_eval_memory``) compares with the available memory. Writes ``--out`` (markdown) with the command.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from recbole.data import data_preparation
from sid_build import machine  # a sibling script

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.benchmark import recipe_file
from recbole_diffgm.trainer import GenerativeTrainer, memory


def rss_gib() -> dict[str, float]:
    """This process's resident memory now (``VmRSS``) and its peak since the last reset (``VmHWM``), GiB."""
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 2**20 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


class _Enough(Exception):
    """Raised after ``--users`` users: the prefix's memory is measured; the metrics are not needed."""


def measure(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="eval-memory-"))
    files = [str(recipe_file(args.recipe))] if args.recipe else []
    config = Config("DiffGM", args.dataset, config_file_list=files, config_dict={
        "eval_batch_size": args.eval_batch_size, "test_beam_size": args.beam, "checkpoint_dir": str(work),
        "show_progress": False, "state": "WARNING", "eval_memory_check": False})  # measured, not refused
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("DiffGM")(config, train._dataset)
    trainer = GenerativeTrainer(config, model)
    users = min(args.users or len(test._dataset), len(test._dataset))
    estimate = memory.eval_batch_bytes(config, model, args.eval_batch_size, max_users=users)
    rows: list[dict] = []
    collect = trainer.eval_collector.eval_batch_collect
    start = time.perf_counter()

    def collect_and_record(scores, interaction, positive_u, positive_i):  # once per batch, after its scores
        collect(scores, interaction, positive_u, positive_i)
        done = (rows[-1]["users"] if rows else 0) + len(interaction)
        rows.append({"users": done, "seconds": time.perf_counter() - start, **rss_gib()})
        if done >= users:
            raise _Enough

    trainer.eval_collector.eval_batch_collect = collect_and_record
    baseline = rss_gib()["VmRSS"]
    reset_peak()
    try:
        trainer.evaluate(test, load_best_model=False)
    except _Enough:
        pass
    available, source = memory.available_memory(torch.device("cpu"))
    return {"rows": rows, "baseline": baseline, "estimate": estimate / 2**30, "test_users": len(test._dataset),
            "available": available / 2**30, "source": source, "eval_level": model.eval_level,
            "recipe": args.recipe or "DiffGM defaults", "weights": sum(p.numel() for p in model.parameters())}


def report(args, result: dict) -> str:
    rows, baseline, estimate = result["rows"], result["baseline"], result["estimate"]
    peak = rows[-1]["VmHWM"]
    growth = peak - baseline
    shown = sorted({2**power - 1 for power in range(len(rows).bit_length())} | {len(rows) - 1})  # batch 1, 2, 4, ...
    lines = [
        "# Evaluation memory: paper-size DiffGM, beam 256, amazon-beauty",
        "",
        f"Command: `python benchmarks/eval_memory.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; {args.threads} threads  ",
        (f"Model: DiffGM, {result['recipe']} (eval_level {result['eval_level']}), {result['weights']:,} weights, "
         "untrained (memory depends on shapes, not weights); shipped SIDs  "),
        (f"Evaluated: {rows[-1]['users']:,} of {result['test_users']:,} test users, eval_batch_size "
         f"{args.eval_batch_size}, test beam {args.beam}"),
        "",
        "| figure | GiB |",
        "|---|---|",
        f"| resident before the evaluation (Python, torch, RecBole, dataset, model) | {baseline:.2f} |",
        f"| peak resident during the evaluation (VmHWM) | {peak:.2f} |",
        f"| peak growth over the resident before | {growth:.2f} |",
        f"| estimate of one batch (`recbole_diffgm.trainer.memory.eval_batch_bytes`) | {estimate:.2f} |",
        f"| growth / estimate | {growth / estimate:.2f} |",
        (f"| the check's need: estimate x {memory.SAFETY} + {memory.OVERHEAD / 2**30:.2f} | "
         f"{memory.SAFETY * estimate + memory.OVERHEAD / 2**30:.2f} |"),
        f"| available when the run ended ({result['source']}) | {result['available']:.2f} |",
        "",
        "Peak resident memory against the users evaluated so far (a plateau after the first batch: each batch",
        "allocates the same working set and frees it; what accumulates, the top-k lists, is a few MB):",
        "",
        "| batches | users | peak resident GiB | growth GiB | seconds |",
        "|---|---|---|---|---|",
    ]
    for index in shown:
        row = rows[index]
        lines.append(f"| {index + 1} | {row['users']:,} | {row['VmHWM']:.2f} | {row['VmHWM'] - baseline:.2f} | "
                     f"{row['seconds']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--recipe", default="DiffGM-release", help="a recipe of properties/recipes ('' for none)")
    parser.add_argument("--users", type=int, default=0, help="the first N test users (whole batches); 0 = all")
    parser.add_argument("--eval_batch_size", type=int, default=512)
    parser.add_argument("--beam", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="results/eval-memory.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = report(args, measure(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)  # a script's report, not library logging


if __name__ == "__main__":
    main()
