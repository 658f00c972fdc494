"""Training throughput of a generative model on a real dataset: targets per CPU-second, per configuration.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --model=DiffGM --config_files=properties/recipes/DiffGM-cpu.yaml \
        --variant="prefix rows:" --variant="per position:train_per_position=True,train_batch_size=32"

Each variant is ``name:key=value,...`` over the shared settings. It runs ``--steps`` optimizer steps (after one
warm-up step) of RecBole's real pipeline (config, dataset, dataloader, model, loss, AdamW) and counts the training
targets (next items) they supervised: RecBole's prefix rows hold one each; with ``train_per_position`` a row holds
one per position of its history. CPU seconds are this process's (all threads), so a figure does not depend on
what else the machine runs; an epoch is every training target once, so its time is targets / throughput. Writes
``--out`` (markdown, with the command).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from speed import build  # a sibling script


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    pairs = (item.split("=", 1) for item in settings.split(",") if item)
    return name, {key: eval(value, {}) if value[:1].isdigit() or value in ("True", "False") else value
                  for key, value in pairs}


def measure(model_name: str, dataset: str, files: list[str], settings: dict, steps: int) -> dict:
    config, _, train, _, _, model = build(model_name, dataset, files, {**settings, "show_progress": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])
    batches = iter(train)
    targets = 0
    for step in range(steps + 1):
        batch = next(batches)
        if step == 1:  # after the warm-up step
            cpu, wall, targets = time.process_time(), time.perf_counter(), 0
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        targets += int(batch["item_length"].sum()) if config["train_per_position"] else len(batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    epoch_targets = int(train._dataset.inter_feat["item_length"].sum()) if config["train_per_position"] \
        else len(train._dataset)
    return {"targets": targets, "cpu_s": cpu, "wall_s": wall, "targets_per_cpu_s": targets / cpu,
            "epoch_targets": epoch_targets, "epoch_cpu_min": epoch_targets / (targets / cpu) / 60,
            "rows_per_batch": config["train_batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DiffGM")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--variant", action="append", required=True, help="name:key=value,... (repeatable)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="results/train-throughput.md")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    rows = []
    for name, settings in map(parse_variant, args.variant):
        result = measure(args.model, args.dataset, args.config_files.split(), settings, args.steps)
        rows.append(f"| {name} | {result['rows_per_batch']} | {result['targets']:,} | {result['cpu_s']:.1f} | "
                     f"{result['targets_per_cpu_s']:.0f} | {result['epoch_targets']:,} | {result['epoch_cpu_min']:.1f} |")
        print(rows[-1], flush=True)
    command = " ".join(["python benchmarks/train_throughput.py", *(f"'{a}'" if " " in a else a for a in sys.orig_argv[2:])])
    Path(args.out).write_text(
        f"# Training throughput: {args.model} on {args.dataset}\n\n```bash\n{command}\n```\n\n"
        f"{args.steps} optimizer steps after one warm-up step, torch threads {torch.get_num_threads()}; CPU seconds of the "
        "process. An epoch is every training target once.\n\n"
        "| variant | rows per batch | targets | CPU s | targets per CPU-s | targets per epoch | CPU-min per epoch |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
