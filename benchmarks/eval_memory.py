"""Peak memory of evaluating the largest configuration: paper-size DiffGM, beam 256, amazon-beauty's test users.

    OMP_NUM_THREADS=1 python benchmarks/eval_memory.py --threads=1 --part=1/2 &   # every test user, in two
    OMP_NUM_THREADS=1 python benchmarks/eval_memory.py --threads=1 --part=2/2 &   # processes side by side
    python benchmarks/eval_memory.py --threads=1 --part=1/2 --report   # the report of what they measured so far
    OMP_NUM_THREADS=1 python benchmarks/eval_memory.py --users=512 --eval_batch_size=256 --threads=1   # a prefix

Builds the model of ``--recipe`` (default ``DiffGM-release``: the DiffGRM release's command, SID-level test; the
network is the paper's, ``properties/model/SIDTransformer.yaml``) on the shipped SIDs of ``--dataset``, untrained:
memory depends on the tensors' shapes alone (CPD keeps ``--beam`` beams whatever the weights; no allocation size
reads a score), not on the weights. Then RecBole's test evaluation (``GenerativeTrainer.evaluate``) of the test
users (the first ``--users``, default all; with ``--part=i/n`` the i-th of n contiguous shares of them) at
``--eval_batch_size`` and ``test_beam_size --beam``, in this process, with the kernel's peak-RSS mark (``VmHWM``)
reset just before it, read after every batch: the peak against the users evaluated so far shows whether it plateaus
after the first batch (it should: every batch allocates the same working set and frees it). Against
``recbole_diffgm.trainer.memory``'s estimate of one batch, which the run's pre-check (``check_eval_memory``)
compares with the available memory. Writes ``--out`` (markdown) with the commands.

The whole test split is hours of one core (0.35-0.8 s a user at beam 256), so a run records every finished batch
in ``<out>.progress/`` (atomically) and the same command resumes after the last one: a batch cut short is
evaluated again, never counted twice. Each process that ran a part is reported with its own peak.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from speed import build  # a sibling script

from recbole_diffgm import InputError
from recbole_diffgm.benchmark import machine_description, recipe_file
from recbole_diffgm.files import write_json_atomically
from recbole_diffgm.trainer import GenerativeTrainer, memory


def rss_gib() -> dict[str, float]:
    """This process's resident memory now (``VmRSS``) and its peak since the last reset (``VmHWM``), GiB."""
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 2**20 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


class _Enough(Exception):
    """Raised after the part's last user: its memory is measured; the metrics are not needed."""


def settings(args) -> dict:
    """What a part's measurement depends on: a progress file of other settings is never resumed."""
    chosen = {key: getattr(args, key) for key in ("dataset", "recipe", "users", "eval_batch_size", "beam", "threads")}
    # config_files only when given: the progress files written before it existed resume
    return {**chosen, "config_files": args.config_files} if args.config_files else chosen


def progress_file(args, part: int) -> Path:
    return Path(f"{args.out}.progress") / f"part-{part}-of-{args.parts}.json"


def load_progress(args, part: int) -> dict:
    """The part's measurements so far; those of other settings are never resumed nor overwritten."""
    path = progress_file(args, part)
    stored = json.loads(path.read_text()) if path.is_file() else None
    if stored is None:
        return {"settings": settings(args), "part": part, "parts": args.parts, "runs": []}
    now = settings(args)
    changed = [f"--{key}={stored['settings'].get(key)} there, {now.get(key)} now"
               for key in {**stored["settings"], **now} if stored["settings"].get(key) != now.get(key)]
    if changed:
        raise SystemExit(f"{path} holds measurements of other settings ({'; '.join(changed)}): rerun with "
                         "those settings, or pass another --out to measure these")
    return stored


def save_progress(args, progress: dict) -> None:
    path = progress_file(args, progress["part"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(progress, path)


def users_done(progress: dict) -> int:
    return sum(run["rows"][-1]["users"] for run in progress["runs"] if run["rows"])


def measure(args) -> dict:
    """Evaluate this part's users not measured yet, recording each batch in the part's progress file."""
    progress = load_progress(args, args.part)  # settings checked before the dataset loads
    work = Path(tempfile.mkdtemp(prefix="eval-memory-"))
    files = ([str(recipe_file(args.recipe))] if args.recipe else []) + args.config_files.split()
    config, _, _, _, test, model = build("DiffGM", args.dataset, files, {
        "eval_batch_size": args.eval_batch_size, "test_beam_size": args.beam, "checkpoint_dir": str(work),
        "eval_memory_check": False})  # measured, not refused
    trainer = GenerativeTrainer(config, model)
    total = min(args.users or len(test._dataset), len(test._dataset))
    first, last = part_range(total, args.part, args.parts)
    progress.update(first_user=first, last_user=last, test_users=len(test._dataset),
                    estimate=memory.eval_batch_bytes(config, model, args.eval_batch_size, max_users=total) / 2**30,
                    recipe=args.recipe or "DiffGM defaults", eval_level=model.eval_level,
                    machine=machine_description(), weights=sum(p.numel() for p in model.parameters()))
    start_user = first + users_done(progress)
    if start_user >= last:
        return progress
    dataset = test._dataset.copy(test._dataset.inter_feat[start_user:last])  # the users not measured yet
    users = FullSortEvalDataLoader(config, dataset, test._sampler, shuffle=False)
    run = {"first_user": start_user, "baseline": rss_gib()["VmRSS"], "rows": []}
    progress["runs"].append(run)
    collect = trainer.eval_collector.eval_batch_collect
    start = time.perf_counter()

    def collect_and_record(scores, interaction, positive_u, positive_i):  # once per batch, after its scores
        collect(scores, interaction, positive_u, positive_i)
        done = (run["rows"][-1]["users"] if run["rows"] else 0) + len(interaction)
        run["rows"].append({"users": done, "seconds": time.perf_counter() - start, **rss_gib()})
        save_progress(args, progress)
        if start_user + done >= last:
            raise _Enough

    trainer.eval_collector.eval_batch_collect = collect_and_record
    reset_peak()
    try:
        trainer.evaluate(users, load_best_model=False)
    except _Enough:
        pass
    available, source = memory.available_memory(torch.device("cpu"))
    progress.update(available=available / 2**30, source=source)
    save_progress(args, progress)
    return progress


def part_range(users: int, part: int, parts: int) -> tuple[int, int]:
    """The i-th (1-based) of ``parts`` contiguous shares of ``users``, as even as possible."""
    return (part - 1) * users // parts, part * users // parts


def report(args) -> str:
    parts = [load_progress(args, part) for part in range(1, args.parts + 1)]
    measured = [part for part in parts if any(run["rows"] for run in part["runs"])]
    if not measured:
        raise SystemExit(f"nothing measured yet in {progress_file(args, 1).parent}")
    info = measured[0]
    runs = [(part, run) for part in measured for run in part["runs"] if run["rows"]]
    growths = [run["rows"][-1]["VmHWM"] - run["baseline"] for _, run in runs]
    peak = max(run["rows"][-1]["VmHWM"] for _, run in runs)
    growth, estimate = max(growths), info["estimate"]
    side_by_side = sum(max(run["rows"][-1]["VmHWM"] for run in part["runs"] if run["rows"]) for part in measured)
    done = sum(users_done(part) for part in parts)
    total = info["test_users"] if not args.users else min(args.users, info["test_users"])
    threads = (f"--threads={args.threads}" + (f" --users={args.users}" if args.users else "")
               + (f" --recipe='{args.recipe}'" if args.recipe != "DiffGM-release" else "")
               + (f" --config_files='{args.config_files}'" if args.config_files else ""))
    commands = [f"python benchmarks/eval_memory.py {threads} --eval_batch_size={args.eval_batch_size} "
                f"--beam={args.beam} --part={part}/{args.parts}" for part in range(1, args.parts + 1)]
    lines = [
        f"# Evaluation memory: DiffGM ({info['recipe']}), beam {args.beam}, {args.dataset}",
        "",
        "Commands (one process each, side by side; each resumes where it stopped):",
        "",
        "```bash",
        *[f"OMP_NUM_THREADS={args.threads} {command}" for command in commands],
        "```",
        "",
        f"Machine: {info['machine']}; {args.threads} threads a process  ",
        (f"Model: DiffGM, {info['recipe']} (eval_level {info['eval_level']}), {info['weights']:,} weights, "
         "untrained (memory depends on shapes, not weights); shipped SIDs  "),
        (f"Evaluated: {done:,} of {total:,} test users ({info['test_users']:,} in the split), eval_batch_size "
         f"{args.eval_batch_size}, test beam {args.beam}" + ("" if done == total else ": **not finished**")),
        "",
        "| figure | GiB |",
        "|---|---|",
        f"| peak resident of any process during its evaluation (VmHWM) | {peak:.2f} |",
        f"| largest peak growth over the resident before the evaluation | {growth:.2f} |",
        f"| estimate of one batch (`recbole_diffgm.trainer.memory.eval_batch_bytes`) | {estimate:.2f} |",
        f"| growth / estimate | {growth / estimate:.2f} |",
        (f"| the check's need: estimate x {memory.SAFETY} + {memory.OVERHEAD / 2**30:.2f} | "
         f"{memory.SAFETY * estimate + memory.OVERHEAD / 2**30:.2f} |"),
        f"| the parts side by side ({len(measured)} of {args.parts} measured): the sum of their peaks | "
        f"{side_by_side:.2f} |",
        (f"| available when the last process ended ({info['source']}) | {info['available']:.2f} |" if "available" in info
         else "| available when the last process ended | – (not read: no part ran to its end) |"),
        "",
        "Each process: the users it evaluated, its resident memory before the evaluation (Python, torch, RecBole,",
        "dataset, model) and its peak (a plateau after the first batch: each batch allocates the same working set",
        "and frees it; what accumulates, the top-k lists, is a few MB):",
        "",
        "| part | users | resident before GiB | peak GiB | growth GiB | batches | seconds | s / user |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (part, run), growth in zip(runs, growths):
        rows, first = run["rows"], run["first_user"]
        lines.append(f"| {part['part']}/{args.parts} | {first:,}–{first + rows[-1]['users'] - 1:,} | "
                     f"{run['baseline']:.2f} | {rows[-1]['VmHWM']:.2f} | {growth:.2f} | {len(rows)} | "
                     f"{rows[-1]['seconds']:,.0f} | {rows[-1]['seconds'] / rows[-1]['users']:.2f} |")
    _, longest = max(runs, key=lambda item: len(item[1]["rows"]))
    rows = longest["rows"]
    shown = sorted({2**power - 1 for power in range(len(rows).bit_length())} | {len(rows) - 1})  # batch 1, 2, 4, ...
    lines += ["", "The peak against the batches evaluated, in the process with the most batches:", "",
              "| batches | users | peak resident GiB | growth GiB | seconds |", "|---|---|---|---|---|"]
    for index in shown:
        row = rows[index]
        lines.append(f"| {index + 1} | {row['users']:,} | {row['VmHWM']:.2f} | {row['VmHWM'] - longest['baseline']:.2f} "
                     f"| {row['seconds']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--recipe", default="DiffGM-release", help="a recipe of properties/recipes ('' for none)")
    parser.add_argument("--users", type=int, default=0, help="the first N test users (whole batches); 0 = all")
    parser.add_argument("--part", default="1/1", help="i/n: the i-th of n contiguous shares of the users")
    parser.add_argument("--report", action="store_true", help="only write the report of what the parts measured")
    parser.add_argument("--eval_batch_size", type=int, default=512)
    parser.add_argument("--beam", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config_files", default="",
                        help="more RecBole yaml files, space-separated (after the recipe)")
    parser.add_argument("--out", default="results/eval-memory.md")
    args = parser.parse_args()
    if not re.fullmatch(r"\d+/\d+", args.part):
        parser.error(f"--part={args.part}: write i/n, e.g. 1/2")
    args.part, args.parts = (int(number) for number in args.part.split("/"))
    if not 1 <= args.part <= args.parts:
        parser.error(f"--part={args.part}/{args.parts}: i must be between 1 and n")
    torch.set_num_threads(args.threads)
    if not args.report:
        try:
            measure(args)
        except InputError as error:  # a file or a setting of the run: its own line, not a traceback
            raise SystemExit(f"error: {error}") from None
    text = report(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)  # a script's report, not library logging


if __name__ == "__main__":
    main()
