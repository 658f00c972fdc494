"""Cost as the catalogue grows: training and item-level decoding of SASRec and the SID models, 12k to 1M items.

    python benchmarks/catalogue_scale.py --sizes=12101,100000,1000000 --threads=1 [--models=...]

Beauty's users, histories and splits stay as they are; the catalogue is padded with synthetic items to each size
(``pad_catalogue``): each has a text, hence an embedding and a SID, and is never a target nor in a history, so it
changes the cost of every model and the quality of none. A synthetic item's text is a real item's row (brand,
categories, price) under a title of 4 to 12 words drawn at random from the real titles' words, seeded.

Each figure comes from a fresh process (its peak memory, RSS, is that figure's alone) with untrained weights (the
work per row and per user does not depend on them) at the converged recipes' sizes (``benchmarks/amazon-beauty-cpu.
yaml`` + the recipe): the SID build (the texts' embedding, in parts that a stopped run resumes, its time the sum of
its parts'; then each quantizer on a cold cache), training rows/s over ``--train_steps`` optimizer steps after one
warm-up step, and decoding: ``full_sort_predict`` (item level: a score for every item of the catalogue, as RecBole's
full ranking needs) and the top 10, ms per test user. Measurements are appended to ``--out``'s ``.jsonl`` and reused
by key (size, row, phase, threads), so a stopped run goes on where it was; the report (markdown, CSV, log-log plot)
is drawn from every measurement there.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import build, endless, peak_gb, test_batches, training_step  # noqa: E402

from recbole_diffgm.benchmark import cpu_model  # noqa: E402

BEAUTY = "amazon-beauty"
BUDGET = "benchmarks/amazon-beauty-cpu.yaml"
DATASET_FILE = f"properties/dataset/{BEAUTY}.yaml"  # the padded copies are read as Beauty is
ROWS = {  # key: (label, model, recipe, config overrides, beam or None)
    "sasrec-ce": ("SASRec, cross-entropy over every item", "SASRec", "SASRec-strong", {}, None),
    "sasrec-bpr": ("SASRec, BPR with 1 sampled negative", "SASRec", "SASRec-strong",
                   {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}, None),
    "diffgm-cpd32": ("DiffGM (OCN), CPD beam 32", "DiffGM", "DiffGM-ocn-cpu", {}, 32),
    "diffgm-cpd256": ("DiffGM (OCN), CPD beam 256", "DiffGM", "DiffGM-ocn-cpu", {}, 256),
    "diffgm-one-pass": ("DiffGM (OCN), one pass", "DiffGM", "DiffGM-ocn-cpu", {"decode_mode": "one_pass"}, None),
    "classifier": ("DigitClassifier, one pass", "DigitClassifier", "DigitClassifier-cpu", {}, None),
    "hybrid": ("DigitClassifierHybrid, one pass + dense", "DigitClassifierHybrid", "DigitClassifier-cpu", {}, None),
    "tiger": ("TIGER, beam 20", "TIGER", "TIGER-cpu", {}, None),  # its recipe's test beam
}
SAME_TRAINING = {"diffgm-cpd256": "diffgm-cpd32", "diffgm-one-pass": "diffgm-cpd32"}  # rows that decode differently
SIDS = {"opq": "DiffGM-ocn-cpu", "rq_vae": "TIGER-cpu"}  # the quantizers of the rows, each timed from its recipe
PHASES = ("embed", "sid", "train", "decode")
TEXTS = "texts"  # the row of the embedding phase: every quantizer's SIDs start from the same embeddings


def dataset_name(size: int, source: str | None = None) -> str:
    return f"{source or BEAUTY}-{size}"


def pad_catalogue(data_path: Path, source: str, target: Path, size: int, seed: int = 0) -> str:
    """``target/<source>-<size>/``: the ``source`` dataset's ``.inter`` and its ``.item`` with synthetic items up to
    ``size`` items (written once, atomically); its name."""
    name = dataset_name(size, source)
    folder = target / name
    item_file = folder / f"{name}.item"
    if item_file.is_file():
        return name
    folder.mkdir(parents=True, exist_ok=True)
    inter = folder / f"{name}.inter"
    inter.unlink(missing_ok=True)
    inter.symlink_to((data_path / source / f"{source}.inter").resolve())
    header, *rows = (data_path / source / f"{source}.item").read_text().splitlines()
    if size < len(rows):
        raise ValueError(f"--sizes: {size:,} is fewer than the {len(rows):,} items of {source}")
    columns = [column.split(":")[0] for column in header.split("\t")]
    title, item_id = columns.index("title"), columns.index("item_id")
    words = np.array(sorted({word for row in rows for word in row.split("\t")[title].split()}))
    rng = np.random.default_rng(seed)
    partial = item_file.with_suffix(".partial")
    with partial.open("w") as out:
        out.write("\n".join([header, *rows]) + "\n")
        for index in range(size - len(rows)):
            fields = rows[rng.integers(len(rows))].split("\t")
            fields[item_id] = f"synthetic{index:08d}"
            fields[title] = " ".join(rng.choice(words, size=rng.integers(4, 13)))
            out.write("\t".join(fields) + "\n")
    partial.rename(item_file)
    return name


def config_of(args, row: str) -> tuple[str, list[str], dict]:
    _, model, recipe, overrides, _ = ROWS[row]
    return model, [DATASET_FILE, BUDGET, f"properties/recipes/{recipe}.yaml"], {
        **overrides, "data_path": args.data_dir, "sid_cache_dir": args.sid_cache, "checkpoint_dir": args.sid_cache}


def measure_embed(args) -> dict:
    """The padded catalogue's texts embedded into the shared cache, in the library's parts (``EMBED_PART``), so that
    a stopped embedding (a million texts take hours here) resumes after its last part; each part's seconds are kept
    beside the cache (``<cache>.seconds.jsonl``) and summed, so the figure is the whole embedding's."""
    from sentence_transformers import SentenceTransformer

    from recbole_diffgm.config import Config
    from recbole_diffgm.data.dataset import ItemTextDataset
    from recbole_diffgm.data.sid.embed import embed_texts, embedding_file
    from recbole_diffgm.files import write_text_atomically
    from recbole_diffgm.utils import create_dataset

    config = Config("DiffGM", dataset_name(args.size), [DATASET_FILE, BUDGET, f"properties/recipes/{SIDS['opq']}.yaml"],
                    {"data_path": args.data_dir, "sid_cache_dir": args.sid_cache, "checkpoint_dir": args.sid_cache,
                     "show_progress": False, "state": "WARNING"})
    texts = create_dataset(config, ItemTextDataset).item_texts(config).texts  # the texts alone, no SIDs yet
    model = config["sent_emb_model"]
    Path(args.sid_cache).mkdir(parents=True, exist_ok=True)
    seconds_file = embedding_file(texts, model, args.sid_cache).with_suffix(".seconds.jsonl")
    real_encode = SentenceTransformer.encode

    def encode(encoder, part, **kwargs):  # one call per part not cached yet
        start = time.perf_counter()
        embeddings = real_encode(encoder, part, **kwargs)
        done = seconds_file.read_text() if seconds_file.is_file() else ""
        write_text_atomically(done + json.dumps({"texts": len(part), "seconds": time.perf_counter() - start}) + "\n",
                              seconds_file)
        return embeddings

    SentenceTransformer.encode = encode
    try:
        embed_texts(texts, model, config["sent_emb_batch_size"], config["sent_emb_device"], Path(args.sid_cache),
                    show_progress=False)
    finally:
        SentenceTransformer.encode = real_encode
    parts = [json.loads(line) for line in seconds_file.read_text().splitlines()] if seconds_file.is_file() else []
    if sum(part["texts"] for part in parts) != len(texts):  # embedded before this phase existed: a sid phase timed it
        return {"items": len(texts), "embedding_s": None}
    return {"items": len(texts), "embedding_s": sum(part["seconds"] for part in parts), "embedding_parts": len(parts)}


def measure_sid(args) -> dict:
    """The SID build of the ``args.row`` quantizer's recipe, as a run does it on a cold cache (embedding, quantizer,
    collision policy); its files then go to the shared cache, where the training and decoding processes find them."""
    import shutil

    import recbole_diffgm.data.dataset as sid_dataset
    from recbole_diffgm.config import Config
    from recbole_diffgm.data.sid.embed import embedding_file
    from recbole_diffgm.utils import create_dataset

    timed = []

    def build_sids(*args, **kwargs):  # the dataset's own call, timed
        start = time.perf_counter()
        result = real_build(*args, **kwargs)
        timed.append((time.perf_counter() - start, result))
        return result

    real_build, sid_dataset.build_sids = sid_dataset.build_sids, build_sids
    model = "TIGER" if args.row == "rq_vae" else "DiffGM"
    cold = Path(tempfile.mkdtemp(prefix="sid-scale-"))
    shared = Path(args.sid_cache)
    for file in shared.glob("emb-*.npz"):  # another quantizer's phase may have embedded these texts: timed there
        shutil.copyfile(file, cold / file.name)
    copied = {file.name for file in cold.iterdir()}
    config = Config(model, dataset_name(args.size), [DATASET_FILE, BUDGET, f"properties/recipes/{SIDS[args.row]}.yaml"],
                    {"data_path": args.data_dir, "sid_cache_dir": str(cold), "checkpoint_dir": str(cold),
                     "show_progress": False, "state": "WARNING"})
    dataset = create_dataset(config)
    (seconds, result), = timed
    texts = dataset.item_texts(config).texts
    embedded = embedding_file(texts, config["sent_emb_model"], cold).name in copied
    shared.mkdir(parents=True, exist_ok=True)
    for file in cold.glob("*.npz"):
        shutil.copyfile(file, shared / f".{file.name}.partial")
        (shared / f".{file.name}.partial").rename(shared / file.name)
    shutil.rmtree(cold)
    return {"items": dataset.item_num - 1, "sid_build_s": seconds, "embedding_cached": embedded,
            **{f"{part}_s": part_seconds for part, part_seconds in result.seconds.items()}}


def measure_train(args) -> dict:
    model_name, files, settings = config_of(args, args.row)
    built = build(model_name, dataset_name(args.size), files, settings)
    step = training_step(built.model, torch.optim.AdamW(built.model.parameters(), lr=1e-4))
    built.model.train()
    batches = endless(built.train)
    step(next(batches))  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    rows = sum(step(next(batches)) for _ in range(args.train_steps))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"items": built.dataset.item_num - 1, "train_rows_per_s": rows / seconds,
            "train_rows_per_cpu_s": rows / cpu, "train_rows_per_epoch": built.train.sample_size,
            "train_epoch_cpu_min": built.train.sample_size / (rows / cpu) / 60,
            "train_batch": built.config["train_batch_size"],
            "train_peak_gb": peak_gb()}


@torch.no_grad()
def measure_decode(args) -> dict:
    model_name, files, settings = config_of(args, args.row)
    built = build(model_name, dataset_name(args.size), files, {**settings, "eval_batch_size": args.decode_batch})
    model = built.model.eval()
    if ROWS[args.row][4] is not None:
        model.beam_size = ROWS[args.row][4]
    batches = [part for part, _ in test_batches(built.test, args.decode_users + args.decode_batch, args.decode_batch)]

    def decode(batch) -> None:
        model.full_sort_predict(batch).topk(10, dim=1)

    decode(batches[0])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches[1:]:
        decode(batch)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    users = sum(len(batch) for batch in batches[1:])
    return {"items": built.dataset.item_num - 1, "decode_ms_per_user": 1000 * seconds / users,
            "decode_cpu_ms_per_user": 1000 * cpu / users,
            "decode_users": users, "decode_peak_gb": peak_gb()}


MEASURE = {"embed": measure_embed, "sid": measure_sid, "train": measure_train, "decode": measure_decode}


def run_phase(args, size: int, row: str, phase: str) -> dict:
    """One measurement in a fresh process; its result, or its error (the last line the process wrote)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run(
            [sys.executable, __file__, f"--phase={phase}", f"--row={row}", f"--size={size}", f"--json={out.name}",
             f"--threads={args.threads}", f"--data_dir={args.data_dir}", f"--sid_cache={args.sid_cache}",
             f"--train_steps={args.train_steps}", f"--decode_users={args.decode_users}",
             f"--decode_batch={args.decode_batch}"], capture_output=True, text=True)
        if done.returncode:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            return {"error": (lines[-1] if lines else f"exit {done.returncode}")[:300]}
        return json.loads(Path(out.name).read_text())


def records(path: Path) -> dict:
    """The measurements so far, by (size, row, phase, threads, machine): a figure of another machine is measured
    again, not reused, so that each size is compared with the others on one machine."""
    found = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            found[record["size"], record["row"], record["phase"], record["threads"], record.get("machine", "?")] = record
    return found


def report(args, found: dict, out: Path) -> None:
    by_row: dict = {}
    embedded = {}  # (size, threads) -> the embed phase's seconds, which a SID build on a warm cache did not spend
    for (size, row, phase, threads, machine), record in found.items():
        result = record["result"]
        if row == TEXTS:
            embedded[size, threads, machine] = result.get("embedding_s")
            if "error" not in result:
                continue
        by_row.setdefault((row, size, threads, machine), {}).update({**result, f"{phase}_error": result.get("error")})
    for (row, size, threads, machine), values in by_row.items():
        spent = embedded.get((size, threads, machine))
        if row in SIDS and values.get("embedding_cached") and spent is not None:
            values.update(embedding_s=spent, embedding_cached=False, sid_build_s=values["sid_build_s"] + spent)
    fields = ["row", "size", "threads", "items", "train_rows_per_s", "train_rows_per_cpu_s", "train_rows_per_epoch",
              "train_epoch_cpu_min", "train_peak_gb",
              "decode_ms_per_user", "decode_cpu_ms_per_user", "decode_peak_gb", "sid_build_s", "embedding_s",
              "embedding_cached", "quantizer_s", "machine", "errors"]
    table = []
    for (row, size, threads, machine), values in list(by_row.items()):  # the rows that train as another row does
        for same, trained in SAME_TRAINING.items():
            if row == trained and (same, size, threads, machine) in by_row:
                by_row[same, size, threads, machine] = {**{key: value for key, value in values.items()
                                                           if key.startswith("train") or key == "items"},
                                                        **by_row[same, size, threads, machine]}
    for (row, size, threads, machine), values in sorted(by_row.items(), key=lambda item: (
            list(ROWS).index(item[0][0]) if item[0][0] in ROWS else -1, *item[0][1:])):
        errors = "; ".join(f"{phase}: {values[f'{phase}_error']}" for phase in PHASES if values.get(f"{phase}_error"))
        table.append({"row": row, "size": size, "threads": threads, **{key: values.get(key) for key in fields[3:-2]},
                      "machine": machine, "errors": errors})
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)

    def cell(value, digits=1):
        return "–" if value is None else f"{value:,.{digits}f}"

    commands = sorted({record["command"] for record in found.values() if "command" in record})
    lines = ["# Cost as the catalogue grows\n", "The commands that made these measurements (each measurement's command, "
             f"commit and machine are in {out.with_suffix('.jsonl').name}):\n", "```bash", *commands, "```\n",
             "Machines: the machine column (the CPU's model; 2 cores, no GPU). Beauty's 22,363 users and splits; the "
             "catalogue padded with synthetic "
             "items (never a target, never in a history; see the script's docstring for their texts). Untrained "
             "weights at the converged recipes' sizes; every figure from a fresh process; memory is the process's "
             "peak RSS (dataset and model included). Decode: item-level `full_sort_predict` + top 10, "
             f"{args.decode_batch} users a batch. Code: commit(s) "
             f"{', '.join(sorted({record.get('commit', '?') for record in found.values()}))}. Plot: "
             f"{out.with_suffix('.png').name}; CSV: "
             f"{out.with_suffix('.csv').name}.\n",
             "Rates are per second of wall time and, in brackets, per CPU-second of the process (the figure that "
             "holds when other work shares the cores). A training row is a row of the model's batches: a history "
             "prefix for SASRec, a user with every position for the per-position SID recipes; the epoch's CPU-minutes "
             "are the comparable figure.\n",
             "| row | items | threads | train rows/s | epoch CPU-min | train peak GB | decode ms/user | decode peak GB "
             "| SID build s (embedding + quantizer) | machine | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in table:
        label = ROWS[entry["row"]][0] if entry["row"] in ROWS else f"SIDs: {entry['row']}"
        embedding = "cached" if entry["embedding_cached"] else cell(entry["embedding_s"])
        sid = (f"{cell(entry['sid_build_s'])} ({embedding} + {cell(entry['quantizer_s'])})"
               if entry["sid_build_s"] is not None else "–")
        lines.append(f"| {label} | {cell(entry['items'] or entry['size'], 0)} | {entry['threads']} | "
                     f"{cell(entry['train_rows_per_s'])} ({cell(entry['train_rows_per_cpu_s'])}) | "
                     f"{cell(entry['train_epoch_cpu_min'])} | {cell(entry['train_peak_gb'], 2)} | "
                     f"{cell(entry['decode_ms_per_user'], 2)} "
                     f"({cell(entry['decode_cpu_ms_per_user'], 2)}) | {cell(entry['decode_peak_gb'], 2)} | {sid} | "
                     f"{entry['machine']} | {entry['errors']} |")
    out.write_text("\n".join(lines) + "\n")
    plot(table, out.with_suffix(".png"))


def plot(table: list[dict], path: Path) -> None:
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, title in ((axes[0], "decode_cpu_ms_per_user", "decode CPU-ms/user (item level)"),
                             (axes[1], "train_peak_gb", "training peak memory, GB")):
        for row in ROWS:
            for threads in sorted({entry["threads"] for entry in table}):
                points = [(entry["size"], entry[key]) for entry in table
                          if entry["row"] == row and entry["threads"] == threads and entry[key] is not None]
                if points:
                    axis.plot(*zip(*sorted(points)), marker="o", label=f"{ROWS[row][0]} ({threads} thr.)")
        axis.set(xscale="log", yscale="log", xlabel="catalogue items", title=title)
        axis.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12101,100000,1000000")
    parser.add_argument("--models", default=",".join(ROWS), help="comma-separated keys of ROWS")
    parser.add_argument("--sids", default=",".join(SIDS), help="quantizers whose SID build is timed, or none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train_steps", type=int, default=5)
    parser.add_argument("--decode_users", type=int, default=512)
    parser.add_argument("--decode_batch", type=int, default=128)
    parser.add_argument("--data_dir", default="saved/catalogue-scale/data")
    parser.add_argument("--sid_cache", default="saved/catalogue-scale/sid_cache")
    parser.add_argument("--out", default="results/catalogue-scale.md")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase:
        Path(args.json).write_text(json.dumps(MEASURE[args.phase](args)))
        return
    args.command = "python " + " ".join(sys.argv)
    models = [key for key in args.models.split(",") if key]
    quantizers = [key for key in args.sids.split(",") if key and key != "none"]
    if unknown := (set(models) - set(ROWS)) | (set(quantizers) - set(SIDS)):
        parser.error(f"unknown {sorted(unknown)}: --models from {', '.join(ROWS)}; --sids from {', '.join(SIDS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    found = records(log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    for size in (int(size) for size in args.sizes.split(",")):
        pad_catalogue(Path(__file__).resolve().parent.parent / "dataset", BEAUTY, Path(args.data_dir), size)
        work = [(TEXTS, "embed")] if quantizers else []
        work += [(quantizer, "sid") for quantizer in quantizers]
        work += [(row, "train") for row in dict.fromkeys(SAME_TRAINING.get(row, row) for row in models)]
        work += [(row, "decode") for row in models]
        for row, phase in work:
            key = (size, row, phase, args.threads, cpu_model())
            if key in found and "error" not in found[key]["result"]:
                continue
            result = run_phase(args, size, row, phase)
            found[key] = {"size": size, "row": row, "phase": phase, "threads": args.threads, "commit": commit,
                          "machine": cpu_model(), "command": args.command,
                          "result": result}
            with log.open("a") as handle:
                handle.write(json.dumps(found[key]) + "\n")
            report(args, found, out)
    report(args, found, out)


if __name__ == "__main__":
    main()
