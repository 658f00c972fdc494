"""Item-level validation time of the converged benchmark's rows, side by side on the same users.

    python benchmarks/inference_speed.py --dataset=amazon-beauty [--users=4096] [--threads=1] [--profile]

What a run of ``benchmarks/amazon-beauty-cpu.yaml`` spends on each validation: RecBole's trainer evaluates the
validation split with the row's recipe (SASRec's full sort; the classifier's one-pass score of every SID; DiffGM's
CPD beam), item level, full ranking. Every row scores the same first ``--users`` validation users (all with
``--users=0``), in a fresh process after one warm-up validation of 256 users, with untrained weights (the work per
user does not depend on them). Reports CPU seconds (this process), wall seconds and milliseconds per user, each
row's ratio to SASRec-strong's, and with ``--profile`` the operators that took the time. Writes ``--out``
(markdown, the command at the top) and its ``.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import build, peak_gb, profile_table  # noqa: E402

BUDGET = "benchmarks/amazon-beauty-cpu.yaml"
ROWS = {  # key: (label, model, recipe, config overrides)
    "sasrec": ("SASRec@SASRec-strong, full sort", "SASRec", "SASRec-strong", {}),
    "classifier": ("DigitClassifier@DigitClassifier-cpu, one pass", "DigitClassifier", "DigitClassifier-cpu", {}),
    "cpd32": ("DiffGM@DiffGM-ocn-cpu, CPD beam 32", "DiffGM", "DiffGM-ocn-cpu", {}),
    "cpd32-2passes": ("DiffGM@DiffGM-ocn-cpu, CPD beam 32, 2 passes", "DiffGM", "DiffGM-ocn-cpu",
                      {"decode_passes": 2}),
    "ocn-one-pass": ("DiffGM@DiffGM-ocn-cpu, one pass", "DiffGM", "DiffGM-ocn-cpu", {"decode_mode": "one_pass"}),
}
REFERENCE = "sasrec"
WARMUP_USERS = 256


def first_users(loader, users: int):
    """The validation loader of the first ``users`` users (all with 0), batched as the recipe batches them."""
    dataset = loader._dataset
    if users:
        dataset = dataset.copy(dataset.inter_feat[:users])
    return type(loader)(loader.config, dataset, loader._sampler, shuffle=False)


def measure(args) -> dict:
    from recbole_diffgm import get_trainer

    _, model_name, recipe, overrides = ROWS[args.row]
    built = build(model_name, args.dataset, [BUDGET, f"properties/recipes/{recipe}.yaml"], overrides)
    trainer = get_trainer(built.config["MODEL_TYPE"], built.config["model"])(built.config, built.model)
    trainer.evaluate(first_users(built.valid, WARMUP_USERS), load_best_model=False)
    valid = first_users(built.valid, args.users)
    users = len(valid._dataset)
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.evaluate(valid, load_best_model=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {"users": users, "cpu_s": cpu, "wall_s": wall, "ms_per_user": 1000 * cpu / users, "peak_gb": peak_gb(),
              "eval_batch_size": built.config["eval_batch_size"]}
    if args.profile:
        result["profile"] = profile_table(lambda: trainer.evaluate(first_users(built.valid, 1024),
                                                                   load_best_model=False))
    return result


def report(args, command: str, results: dict) -> str:
    from recbole_diffgm.benchmark import machine_description

    reference = results[REFERENCE]["ms_per_user"]
    lines = [f"# Item-level validation time, side by side\n\n```bash\n{command}\n```\n",
             f"Machine: {machine_description()}; {args.threads} thread(s) per row, each row in a fresh process. "
             f"Untrained weights, recipes at their converged-benchmark sizes ({BUDGET} + the recipe); "
             f"RecBole's trainer.evaluate on the validation split, item level, full ranking; the same "
             f"{next(iter(results.values()))['users']:,} users for every row, after a warm-up of {WARMUP_USERS}. "
             "ms/user is CPU time (this process) per user.\n",
             "| row | users | eval batch | CPU s | wall s | ms/user | × SASRec-strong | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        lines.append(f"| {ROWS[key][0]} | {row['users']:,} | {row['eval_batch_size']} | {row['cpu_s']:.1f} | "
                     f"{row['wall_s']:.1f} | {row['ms_per_user']:.2f} | {row['ms_per_user'] / reference:.2f} | "
                     f"{row['peak_gb']:.2f} |")
    for key, row in results.items():
        if "profile" in row:
            lines += [f"\n## Profile: {ROWS[key][0]} (1,024 users)\n", "```", row["profile"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--users", type=int, default=4096, help="the first N validation users; 0: all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated keys of ROWS")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default="results/inference-speed.md")
    parser.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.row:
        Path(args.json).write_text(json.dumps(measure(args)))
        return
    rows = args.rows.split(",")
    if REFERENCE not in rows:
        parser.error(f"--rows must include {REFERENCE}, the reference of the ratios")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"--rows: unknown {sorted(unknown)}; known: {', '.join(ROWS)}")
    results = {}
    for key in rows:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, __file__, f"--row={key}", f"--dataset={args.dataset}",
                            f"--users={args.users}", f"--threads={args.threads}", f"--json={out.name}",
                            *(["--profile"] if args.profile else [])], check=True)
            results[key] = json.loads(Path(out.name).read_text())
    command = "python " + " ".join(sys.argv)
    Path(args.out).write_text(report(args, command, results))
    Path(args.out).with_suffix(".json").write_text(json.dumps({"command": command, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
