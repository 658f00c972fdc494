"""Text models for semantic IDs, side by side on one dataset: what embedding costs, the SIDs each gives, and how
much of the next item an item's text alone finds.

    python benchmarks/text_models.py --dataset=amazon-beauty --models=all-MiniLM-L6-v2,/path/to/all-mpnet-base-v2

For each sentence-transformers name or path in ``--models``:

- the item texts embedded (seconds; the embedding cache of ``--sid_cache_dir`` is reused when it holds them, and
  the table says so);
- the converged recipes' SIDs (OPQ, ``--n_digit`` digits of 256 codes, PCA 256, seed 2020, ``recbole_diffgm.data.sid``
  itself): unique SIDs and items that share one before the collision policy; the quantization error, the mean
  squared distance of an item's unit-length whitened PCA vector to its SID's reconstruction (the space OPQ
  quantizes; 0 is exact, 1 is a SID that says nothing); the error ``sid_collision: reassign`` adds to make every
  SID unique;
- a next-item check of the text alone, no training: every validation user's items ranked by the cosine of their
  embedding with the mean of the last ``--history`` history items' embeddings, item level (the history included,
  as RecBole ranks), Recall@10 and NDCG@10 on RecBole's leave-one-out split.

Each model's figures go to ``<out>.jsonl`` (keyed by model, settings and machine; a later run replaces its own line),
and ``<out>.md`` is drawn from all of them, the command of each at the top.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recbole_diffgm.benchmark import cpu_model, machine_description
from recbole_diffgm.config import Config
from recbole_diffgm.data.dataset import ItemTextDataset
from recbole_diffgm.data.sid import SIDSettings
from recbole_diffgm.data.sid.collisions import collision_report, reassign
from recbole_diffgm.data.sid.embed import embed_texts, embedding_file
from recbole_diffgm.data.sid.quantizers import make_quantizer
from recbole_diffgm.files import write_text_atomically
from recbole_diffgm.utils import create_dataset

TOP_K = 10


def sid_figures(settings: SIDSettings, embeddings: np.ndarray) -> dict:
    """The quantizer's SIDs of ``embeddings`` before the collision policy, their quantization error, and what
    ``reassign`` adds to it."""
    quantizer = make_quantizer("opq", settings.quantizer)
    start = time.perf_counter()
    codes = quantizer.quantize(embeddings).astype(np.int64)
    seconds = time.perf_counter() - start
    costs = quantizer.digit_costs(embeddings)  # [N, n, K]: squared distance of each sub-vector to each code
    error = np.take_along_axis(costs, codes[..., None], axis=2).sum(axis=(1, 2))
    reassigned, added = reassign(codes, costs)
    report = collision_report(codes)
    return {"quantizer_s": seconds, "unique_sids": report.unique_sids, "items_sharing": report.colliding_items,
            "largest_group": report.largest_group, "quantization_error": float(error.mean()),
            "reassign_added_pct": float(100 * added.sum() / error.sum()),
            "reassign_moved": int((reassigned != codes).any(axis=1).sum())}


@torch.no_grad()
def text_next_item(valid, embeddings: np.ndarray, history: int) -> dict:
    """Recall and NDCG at ``TOP_K`` of ranking every item by its text's cosine with the mean of the last
    ``history`` history items' texts (``embeddings`` in internal item order from 1; ties in the target's favour)."""
    items = torch.nn.functional.normalize(torch.from_numpy(embeddings), dim=1)
    items = torch.cat([torch.zeros(1, items.shape[1]), items])  # row 0: padding
    ranks = []
    for interaction, _, _, positive_i in valid:
        sequences, lengths = interaction["item_id_list"], interaction["item_length"]
        steps = torch.arange(sequences.shape[1])
        recent = (steps[None] < lengths[:, None]) & (steps[None] >= (lengths - history)[:, None])
        query = (items[sequences] * recent[..., None]).sum(dim=1)
        scores = torch.nn.functional.normalize(query, dim=1) @ items.T
        scores[:, 0] = float("-inf")
        target = scores.gather(1, positive_i[:, None])
        ranks.append(1 + (scores > target).sum(dim=1))
    ranks = torch.cat(ranks).double()
    hit = ranks <= TOP_K
    return {"users": len(ranks), "recall@10": hit.double().mean().item(),
            "ndcg@10": torch.where(hit, 1 / torch.log2(ranks + 1), 0.0).mean().item()}


def measure(model: str, args, command: str) -> dict:
    from recbole.data import data_preparation

    config = Config("SASRec", args.dataset, config_dict={
        "sent_emb_model": model, "sid_cache_dir": str(args.sid_cache_dir), "n_digit": args.n_digit,
        "codebook_size": 256, "sid_quantizer": "opq", "sid_collision": "keep", "show_progress": False,
        "state": "WARNING", "train_neg_sample_args": None})
    dataset = create_dataset(config, ItemTextDataset)
    texts = dataset.item_texts(config).texts
    settings = SIDSettings.from_config(config)
    cached = embedding_file(texts, model, args.sid_cache_dir).is_file()
    start = time.perf_counter()
    embeddings = embed_texts(texts, model, settings.sent_emb_batch_size, settings.sent_emb_device,
                             settings.cache_dir, show_progress=True)
    embedding_s = time.perf_counter() - start
    _, valid, _ = data_preparation(config, dataset)
    return {"model": model, "dim": int(embeddings.shape[1]), "items": len(texts), "n_digit": args.n_digit,
            "embedding_s": embedding_s, "embedding_cached": cached, "threads": torch.get_num_threads(),
            **sid_figures(settings, embeddings), "text_next_item": text_next_item(valid, embeddings,
                                                                                         args.history),
            "history": args.history, "machine": cpu_model(), "machine_description": machine_description(),
            "command": command}


def report(records: list[dict]) -> str:
    lines = ["# Text models for semantic IDs", "", "The commands (each record's own is in the .jsonl):", "", "```bash",
             *dict.fromkeys(record["command"] for record in records), "```", "",
             "OPQ SIDs of 256 codes a digit from each text model's embeddings (PCA 256, whitened, seed 2020), before "
             "the collision policy. Quantization error: mean squared distance of an item's unit-length PCA vector "
             "to its SID's reconstruction (0 exact, 1 a SID that says nothing). Text next item: each validation "
             "user's items ranked by cosine with the mean of the last history items' texts, no training, item "
             "level (benchmarks/text_models.py's docstring).", "",
             "| text model | dim | items | digits | embedding s | unique SIDs | items sharing | largest group | "
             "quantization error | reassign adds | text next item R@10 | N@10 | machine, threads |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        text = record["text_next_item"]
        embedding = f"{record['embedding_s']:.1f}" + (" (cache)" if record["embedding_cached"] else "")
        lines.append(f"| {Path(record['model']).name} | {record['dim']} | {record['items']:,} | {record['n_digit']} | "
                     f"{embedding} | {record['unique_sids']:,} | {record['items_sharing']:,} | "
                     f"{record['largest_group']} | {record['quantization_error']:.4f} | "
                     f"+{record['reassign_added_pct']:.1f}% ({record['reassign_moved']:,} moved) | "
                     f"{text['recall@10']:.4f} | {text['ndcg@10']:.4f} | {record['machine']}, {record['threads']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--models", default="all-MiniLM-L6-v2", help="comma-separated sentence-transformers names "
                        "or paths")
    parser.add_argument("--n_digit", type=int, default=8)
    parser.add_argument("--history", type=int, default=3, help="history items whose texts make the query")
    parser.add_argument("--sid_cache_dir", type=Path, default=Path(tempfile.gettempdir()) / "text-models-cache")
    parser.add_argument("--out", type=Path, default=Path("results/text-models"))
    args = parser.parse_args()
    command = "python benchmarks/text_models.py " + " ".join(
        f"--{key}={value}" for key, value in vars(args).items() if key != "sid_cache_dir")
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    jsonl = args.out.with_suffix(".jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    for model in filter(None, args.models.split(",")):
        record = measure(model, args, command)
        key = (record["model"], record["n_digit"], record["history"], record["machine"])
        records = [old for old in records
                   if (old["model"], old["n_digit"], old["history"], old["machine"]) != key] + [record]
        write_text_atomically("".join(json.dumps(old) + "\n" for old in records), jsonl)
        write_text_atomically(report(records), args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
