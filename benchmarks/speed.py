"""Training and decoding speed and memory of DiffGM and TIGER on a real dataset, against the FLOP floor.

    python benchmarks/speed.py --dataset=amazon-beauty --checkpoint=<a trained DiffGM .pth> [--threads=2]

Each figure comes from a fresh process, so its peak memory (RSS) is that figure's alone. The models run at their
recipe sizes (``properties/model/DiffGM.yaml``, ``TIGER.yaml``) with untrained weights: the work per row and
per beam does not depend on the weights. Training: rows per second over ``--train_steps`` optimizer steps after
one warm-up step. Decoding: milliseconds per test user, batches of ``--decode_batch`` users, after one warm-up
batch. FLOPs are counted by ``torch.utils.flop_counter`` (matrix products and attention); the floor is those
FLOPs at the fp32 matrix-multiply rate measured here. With ``--checkpoint``, the decoding modes of that trained
DiffGM are compared on the first ``--quality_users`` test users: item-level NDCG@10 / Recall@10 (RecBole's full
ranking) against decode time. Writes ``--out`` (markdown) with the command at the top.

The other benchmark scripts import their set-up (``build``: config, dataset, splits, untrained model) and their
measurements (timed steps and decoding, FLOP counts, the floor, peak memory; on a GPU too) from here, so that a
figure means the same in every report.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

CPU = torch.device("cpu")

# The published DiffGRM code on a 2-core CPU of this kind, 2 threads (issue 7); decode at batch 32.
REFERENCE = {
    ("DiffGM", "train rows/s"): 57.9,
    ("DiffGM", "train peak GB"): 11.5,
    ("DiffGM", "decode ms/user @32"): 73.2,
    ("DiffGM", "decode ms/user @256"): 816.0,
    ("DiffGM", "decode peak GB @256"): 15.6,
    ("SID", "embedding s"): 120.0,
    ("SID", "opq s"): 45.0,
}
BEAMS = (32, 128, 256)
MODES = [  # (label, model fields, beam)
    ("CPD, beam 256", {}, 256),
    ("CPD, beam 128", {}, 128),
    ("CPD, beam 64", {}, 64),
    ("CPD, beam 32", {}, 32),
    ("CPD, beam 16", {}, 16),
    ("CPD, beam 256, 2 passes", {"decode_passes": 2}, 256),
    ("CPD, beam 64, 2 passes", {"decode_passes": 2}, 64),
    ("CPD, beam 32, 2 passes", {"decode_passes": 2}, 32),
    ("one pass", {"decode_mode": "one_pass"}, 32),
    ("one pass + CPD re-rank of top 16", {"decode_mode": "one_pass", "rerank_size": 16}, 32),
    ("one pass + CPD re-rank of top 32", {"decode_mode": "one_pass", "rerank_size": 32}, 32),
    ("one pass + CPD re-rank of top 64", {"decode_mode": "one_pass", "rerank_size": 64}, 32),
]


# ----- measurements (benchmarks/gpu_paper.py measures with them too) -------------------------------------------

class Built(NamedTuple):
    """RecBole's pipeline up to an untrained model."""

    config: object
    dataset: object
    train: object
    valid: object
    test: object
    model: torch.nn.Module


def build(model_name: str, dataset: str, config_files: list[str] | None = None,
          config_dict: dict | None = None) -> Built:
    """Config, dataset, splits and an untrained model, as a run starts them (its seed before the dataset), the
    weights drawn from seed 0: what the benchmark scripts time and size (the work per row and per beam depends on
    the shapes, not the weights). The model stays on the CPU; move it to ``config["device"]`` to run it there."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_diffgm import Config, create_dataset, get_model

    config = Config(model_name, dataset, config_files, {"show_progress": False, "state": "WARNING",
                                                        **(config_dict or {})})
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    torch.manual_seed(0)
    return Built(config, data, train, valid, test, get_model(model_name)(config, train._dataset))


def peak_gb() -> float:
    """This process's peak resident memory (RSS) so far, GB: each figure runs in a fresh process for its own."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory since the last ``reset_peak`` on CUDA; the process's peak RSS on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_gb()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device = CPU) -> float:
    """Seconds of ``work()``, the device's queue drained before and after (CUDA runs asynchronously)."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def each(work: Callable[[object], object], items) -> None:
    """``work`` on every item, its results dropped as they come (a list of them would hold every output at once)."""
    for item in items:
        work(item)


def flops_of(work: Callable[[], object]) -> int:
    """The FLOPs of ``work()`` as torch counts them (matrix products and attention)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def floor_row(flops: float, seconds: float, gflops: float) -> dict:
    """Measured time against the FLOP floor: ``flops`` at ``gflops``."""
    floor = flops / gflops / 1e9
    return {"gflops": flops / 1e9, "floor_ms": 1000 * floor, "measured_ms": 1000 * seconds,
            "over_floor": seconds / floor if floor else float("inf")}


def matmul_gflops(device: torch.device = CPU, dtype: torch.dtype = torch.float32) -> float:
    """The matrix-multiply rate here, after one warm-up product: a 2048-cube product 10 times on the CPU, an
    8192-cube one 50 times on a GPU (a smaller one would not fill it). The FLOP floor's rate."""
    size, repeats = (8192, 50) if device.type == "cuda" else (2048, 10)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    seconds = timed(lambda: each(lambda _: a @ b, range(repeats)), device)
    return 2 * size**3 * repeats / seconds / 1e9


def endless(loader) -> Iterator:
    """The loader's batches, epoch after epoch (a slice may hold fewer batches than the steps timed)."""
    while True:
        yield from loader


def training_step(model, optimizer, device: torch.device = CPU) -> Callable[[object], int]:
    """One optimizer step of ``model``'s loss on a batch (moved to ``device``); it returns the batch's rows."""
    def step(batch) -> int:
        batch = batch.to(device)
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch)

    return step


def measure_steps(step: Callable[[object], int], batches: Iterator, steps: int, device: torch.device = CPU,
                  warmup: int = 1) -> dict:
    """``steps`` training steps timed after ``warmup`` untimed ones and one more whose FLOPs per row are counted
    (a FLOP counter slows what it counts); the device's peak memory is reset before the timed steps."""
    for _ in range(warmup):
        step(next(batches))
    counted = []
    flops_per_row = flops_of(lambda: counted.append(step(next(batches)))) / counted[0]
    reset_peak(device)
    rows = []
    seconds = timed(lambda: rows.extend(step(next(batches)) for _ in range(steps)), device)
    return {"rows": sum(rows), "seconds": seconds, "flops_per_row": flops_per_row}


@torch.no_grad()
def decoding_speed(model, warmup, batches: list, beam: int, device: torch.device = CPU) -> dict:
    """Decoding ``batches`` at ``beam`` (the model's ``decode``, in its decoding mode), timed after decoding the
    ``warmup`` batch once, with the FLOPs per user of decoding the first of them; the device's peak memory is reset
    before the timed decoding."""
    model.eval()
    model.decode(warmup[model.ITEM_SEQ], beam)
    flops_per_user = flops_of(lambda: model.decode(batches[0][model.ITEM_SEQ], beam)) / len(batches[0])
    users = sum(len(batch) for batch in batches)
    reset_peak(device)
    seconds = timed(lambda: each(lambda batch: model.decode(batch[model.ITEM_SEQ], beam), batches), device)
    return {"users": users, "seconds": seconds, "ms_per_user": 1000 * seconds / users,
            "flops_per_user": flops_per_user}


def set_mode(model, fields: dict, beam: int) -> None:
    """A decoding mode of ``MODES`` on a loaded model: CPD's defaults (every digit its own pass, no re-ranking),
    then ``fields``, and the beam."""
    model.decode_mode, model.decode_passes, model.rerank_size = "cpd", model.n_digit, 0
    for key, value in fields.items():
        setattr(model, key, value)
    model.beam_size = beam


def test_batches(test, users: int, batch_size: int):
    """The first ``users`` test users, ``batch_size`` at a time, as ``(interaction, target items)``."""
    taken = 0
    for interaction, _, _, positive_i in test:
        for start in range(0, len(interaction), batch_size):
            if taken >= users:
                return
            part = interaction[start: start + batch_size]
            taken += len(part)
            yield part, positive_i[start: start + batch_size]


# ----- this script's figures, each in a fresh process ----------------------------------------------------------

def profile_table(work) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        work()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=45)


def measure_matmul(_args) -> dict:
    return {"gflops": matmul_gflops()}


def measure_train(args) -> dict:
    config, _, train, _, _, model = build(args.model, args.dataset)
    step = training_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    batches = iter(train)
    model.train()
    measured = measure_steps(step, batches, args.train_steps)
    table = profile_table(lambda: step(next(batches)))
    return {"rows_per_s": measured["rows"] / measured["seconds"],
            "seconds_per_step": measured["seconds"] / args.train_steps, "batch": config["train_batch_size"],
            "flops_per_row": measured["flops_per_row"], "peak_gb": peak_gb(), "profile": table}


@torch.no_grad()
def measure_decode(args) -> dict:
    built = build(args.model, args.dataset, config_dict={"eval_batch_size": 512})
    model = built.model
    batches = [part for part, _ in test_batches(built.test, args.decode_users + args.decode_batch, args.decode_batch)]
    decoded = decoding_speed(model, batches[0], batches[1:], args.beam)
    result = {"ms_per_user": decoded["ms_per_user"], "flops_per_user": decoded["flops_per_user"], "peak_gb": peak_gb()}
    if args.beam == BEAMS[0]:
        result["profile"] = profile_table(lambda: model.decode(batches[1][model.ITEM_SEQ], args.beam))
    return result


@torch.no_grad()
def measure_quality(args) -> dict:
    from recbole_diffgm import load_data_and_model

    _, model, _, _, _, test = load_data_and_model(args.checkpoint, {"eval_batch_size": 512, "state": "WARNING"})
    model.eval()
    batches = list(test_batches(test, args.quality_users, args.decode_batch))
    rows = []
    for label, overrides, beam in MODES:  # each mode sets the model's own decoding fields
        set_mode(model, overrides, beam)
        ndcg = recall = 0.0
        seconds = 0.0
        for interaction, target in batches:
            start = time.perf_counter()
            scores = model.full_sort_predict(interaction)
            seconds += time.perf_counter() - start
            # RecBole's full ranking of a sequential model: every item but the padding, the history included.
            rank = (scores > scores.gather(1, target[:, None])).sum(dim=1)
            hit = rank < 10
            recall += hit.sum().item()
            ndcg += (hit / torch.log2(rank.float() + 2)).sum().item()
        users = sum(len(target) for _, target in batches)
        rows.append({"mode": label, "beam": beam, "ndcg@10": ndcg / users, "recall@10": recall / users,
                     "ms_per_user": 1000 * seconds / users, "users": users})
    return {"modes": rows}


def run_phase(args, phase: str, **extra) -> dict:
    """One measurement in a fresh process (its own peak memory); its JSON result."""
    command = [sys.executable, __file__, f"--phase={phase}", f"--dataset={args.dataset}", f"--threads={args.threads}",
               f"--train_steps={args.train_steps}", f"--decode_users={args.decode_users}",
               f"--decode_batch={args.decode_batch}", f"--quality_users={args.quality_users}",
               *(f"--{key}={value}" for key, value in extra.items())]
    if args.checkpoint:
        command.append(f"--checkpoint={args.checkpoint}")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([*command, f"--json={out.name}"], check=True)
        return json.loads(Path(out.name).read_text())


def ratio_row(model: str, figure: str, ours: float, better: str) -> str:
    reference = REFERENCE.get((model, figure))
    if reference is None:
        return f"| {model} | {figure} | {ours:,.1f} | | |"
    ratio = ours / reference if better == "higher" else reference / ours
    return f"| {model} | {figure} | {ours:,.1f} | {reference:,.1f} | {ratio:.2f}x |"


def report(args, results: dict) -> str:
    from recbole_diffgm.benchmark import machine_description

    gflops = results["matmul"]["gflops"]
    lines = [
        "# Speed and memory",
        "",
        f"Command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine_description()}; {args.threads} threads  ",
        f"fp32 matrix multiply (2048 x 2048 x 2048), measured here: {gflops:,.1f} GFLOP/s",
        "",
        "## Against the published DiffGRM code (same machine kind, 2 threads; ratio > 1 = ours better)",
        "",
        "| model | figure | ours | reference | ratio |",
        "|---|---|---|---|---|",
    ]
    for model in ("DiffGM", "TIGER"):
        train = results[f"train-{model}"]
        lines.append(ratio_row(model, "train rows/s", train["rows_per_s"], "higher"))
        lines.append(ratio_row(model, "train peak GB", train["peak_gb"], "lower"))
        for beam in BEAMS:
            decode = results[f"decode-{model}-{beam}"]
            lines.append(ratio_row(model, f"decode ms/user @{beam}", decode["ms_per_user"], "lower"))
            lines.append(ratio_row(model, f"decode peak GB @{beam}", decode["peak_gb"], "lower"))
    if "sid" in results:
        for figure, seconds in results["sid"].items():
            lines.append(ratio_row("SID", figure, seconds, "lower"))
    lines += [
        "",
        "## Time over the FLOP floor",
        "",
        "| model | work | GFLOPs | floor (ms) | measured (ms) | measured / floor |",
        "|---|---|---|---|---|---|",
    ]
    for model in ("DiffGM", "TIGER"):
        train = results[f"train-{model}"]
        flops = train["flops_per_row"] * train["batch"]
        lines.append(f"| {model} | training step, {train['batch']} rows | {flops / 1e9:,.2f} | "
                     f"{flops / gflops / 1e6:,.0f} | {1000 * train['seconds_per_step']:,.0f} | "
                     f"{1000 * train['seconds_per_step'] / (flops / gflops / 1e6):.1f} |")
        for beam in BEAMS:
            decode = results[f"decode-{model}-{beam}"]
            floor = decode["flops_per_user"] / gflops / 1e6
            lines.append(f"| {model} | decode one user, beam {beam} | {decode['flops_per_user'] / 1e9:,.3f} | "
                         f"{floor:,.2f} | {decode['ms_per_user']:,.1f} | {decode['ms_per_user'] / floor:.1f} |")
    if "quality" in results:
        modes = results["quality"]["modes"]
        base = modes[0]
        lines += [
            "",
            (f"## Decoding modes: quality against time ({Path(args.checkpoint).name}, first {base['users']:,} test "
             "users, item level)"),
            "",
            "| mode | NDCG@10 | vs CPD-256 | Recall@10 | ms/user | speed-up vs CPD-256 |",
            "|---|---|---|---|---|---|",
        ]
        for mode in modes:
            lines.append(f"| {mode['mode']} | {mode['ndcg@10']:.4f} | {mode['ndcg@10'] / base['ndcg@10'] - 1:+.1%} | "
                         f"{mode['recall@10']:.4f} | {mode['ms_per_user']:.2f} | "
                         f"{base['ms_per_user'] / mode['ms_per_user']:.1f}x |")
    for name, key in (("training step", "train-DiffGM"), ("decode batch, beam 32", f"decode-DiffGM-{BEAMS[0]}"),
                      ("TIGER training step", "train-TIGER"), ("TIGER decode batch, beam 32", f"decode-TIGER-{BEAMS[0]}")):
        lines += ["", f"## Profile: {name} (self CPU time)", "", "```", results[key]["profile"].strip(), "```"]
    return "\n".join(lines) + "\n"


def measure_sid(args) -> dict:
    from recbole_diffgm import Config, create_dataset
    from recbole_diffgm.data.dataset import SIDDataset
    from recbole_diffgm.data.sid import SIDSettings, build_sids
    from recbole_diffgm.data.sid.embed import embed_texts

    cache = Path(tempfile.mkdtemp(prefix="sid-speed-"))
    config = Config("DiffGM", args.dataset, config_dict={"sid_cache_dir": str(cache / "first"), "state": "WARNING",
                                                         "show_progress": False})
    texts = create_dataset(config, SIDDataset).item_texts(config).texts
    start = time.perf_counter()
    embed_texts(texts, config["sent_emb_model"], config["sent_emb_batch_size"], config["sent_emb_device"],
                cache / "timed", show_progress=False)
    result = {"embedding s": time.perf_counter() - start}
    for quantizer, model in (("opq", "DiffGM"), ("rq_vae", "TIGER")):
        settings = SIDSettings.from_config(Config(model, args.dataset, config_dict={"sid_cache_dir": str(cache / model)}))
        settings.cache_dir.mkdir(parents=True)
        for entry in (cache / "timed").glob("emb-*.npz"):  # the embeddings are timed above
            (settings.cache_dir / entry.name).write_bytes(entry.read_bytes())
        result[f"{quantizer} s"] = build_sids(texts, settings, show_progress=False).seconds["quantizer"]
    return result


PHASES = {"matmul": measure_matmul, "train": measure_train, "decode": measure_decode, "quality": measure_quality,
          "sid": measure_sid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--checkpoint", help="a trained DiffGM run, for the decoding-modes table")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--train_steps", type=int, default=5)
    parser.add_argument("--decode_users", type=int, default=64)
    parser.add_argument("--decode_batch", type=int, default=32)
    parser.add_argument("--quality_users", type=int, default=1000)
    parser.add_argument("--skip_sid", action="store_true", help="do not time the semantic-ID build")
    parser.add_argument("--out", default="results/speed.md")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase:
        Path(args.json).write_text(json.dumps(PHASES[args.phase](args)))
        return

    # Each figure is written as soon as it is measured: a failure loses none of the figures before it.
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    def measure(key: str, phase: str, **extra) -> None:
        results[key] = run_phase(args, phase, **extra)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))

    measure("matmul", "matmul")
    if not args.skip_sid:
        measure("sid", "sid")
    for model in ("DiffGM", "TIGER"):
        measure(f"train-{model}", "train", model=model)
        for beam in BEAMS:
            measure(f"decode-{model}-{beam}", "decode", model=model, beam=beam)
    if args.checkpoint:
        measure("quality", "quality")
    Path(args.out).write_text(report(args, results))
    print(report(args, results))  # a script's report, not library logging


if __name__ == "__main__":
    main()
