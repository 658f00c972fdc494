"""What CPD's beam holds at the end, and what it ranks: distinct catalogue SIDs per beam and item-level quality.

    python benchmarks/cpd_beam.py --checkpoint=<a trained DiffGM .pth> --beams=32,256 --users=2048 --label=after

For each beam size, the trained DiffGM of ``--checkpoint`` decodes the first ``--users`` test users with CPD (its
own ``decode_passes`` and ``dedup_strategy``, whatever decoding it was validated with) and reports, per user, how many distinct SIDs that some catalogue item
has its beams end on (mean, smallest, users with fewer than 10), and item-level NDCG@10 / Recall@10 of RecBole's
full ranking (``full_sort_predict``; history not masked). It reads only ``model.decode`` and
``model.full_sort_predict``, so the same file measures an older checkout of the package (``PYTHONPATH=<checkout>``)
at the same checkpoint. Prints one JSON line per beam size; ``--out`` appends them to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from speed import test_batches  # a sibling script


def package_commit() -> str:
    import recbole_diffgm

    folder = Path(recbole_diffgm.__file__).parent
    result = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


@torch.no_grad()
def measure(args) -> list[dict]:
    from recbole_diffgm import load_data_and_model

    # CPD's beam whatever the run validated with (an ablation run selects with one-pass scoring).
    overrides = {"eval_batch_size": 512, "state": "WARNING", "decode_mode": "cpd", "rerank_size": 0}
    _, model, _, _, _, test = load_data_and_model(args.checkpoint, overrides)
    model.eval()
    batches = list(test_batches(test, args.users, args.batch))
    rows = []
    for beam in args.beams:
        model.beam_size = beam
        distinct, ndcg, recall, seconds = [], 0.0, 0.0, 0.0
        for interaction, target in batches:
            codes, scores, _ = model.decode(interaction[model.ITEM_SEQ], beam)
            start = time.perf_counter()
            item_scores = model.full_sort_predict(interaction)  # decodes again: the time of an evaluation
            seconds += time.perf_counter() - start
            legal = (model.sid_trie.lookup(codes) >= 0) & scores.isfinite()
            distinct += [len({tuple(sid) for sid in user[kept].tolist()}) for user, kept in zip(codes, legal)]
            # RecBole's full ranking of a sequential model: every item but the padding, the history included.
            rank = (item_scores > item_scores.gather(1, target[:, None])).sum(dim=1)
            hit = rank < 10
            recall += hit.sum().item()
            ndcg += (hit / torch.log2(rank.float() + 2)).sum().item()
        users = len(distinct)
        rows.append({"label": args.label, "code": package_commit(), "checkpoint": Path(args.checkpoint).name,
                     "beam": beam, "users": users, "distinct_legal_sids_mean": sum(distinct) / users,
                     "distinct_legal_sids_min": min(distinct),
                     "users_below_10": sum(count < 10 for count in distinct),
                     "ndcg@10": ndcg / users, "recall@10": recall / users,
                     "ms_per_user": 1000 * seconds / users, "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--beams", default="32,256", type=lambda text: [int(beam) for beam in text.split(",")])
    parser.add_argument("--users", type=int, default=2048, help="the first test users measured")
    parser.add_argument("--batch", type=int, default=64, help="users per decoding batch")
    parser.add_argument("--label", default="", help="a name for this code version in the output")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="a JSON-lines file the rows are appended to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for row in measure(args):
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as out:  # one whole line per row: a killed run leaves the finished beams
                out.write(line + "\n")


if __name__ == "__main__":
    main()
