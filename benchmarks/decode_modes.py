"""One trained DiffGM's weights, ranked by each decoding mode: where item-level quality is won or lost.

    python benchmarks/decode_modes.py --checkpoint=<a trained DiffGM .pth> --users=1024 --out=results/decode-modes.jsonl

The checkpoint's model scores the first ``--users`` users of ``--split`` (validation by default: a diagnosis, not
a selection) with RecBole's full ranking at item level (``full_sort_predict``, history not masked) in each mode:
one-pass scoring of every catalogue SID (the all-masked pass's digit sum), one-pass candidates re-scored by CPD's
guided fill (``rerank_size``), and CPD's beam. The same weights in every mode, so a difference is the decoding's.
Prints one JSON line per mode; ``--out`` appends them to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cpd_beam import package_commit  # sibling scripts
from speed import set_mode, test_batches

MODES = {  # label -> (model fields, beam)
    "one pass": ({"decode_mode": "one_pass"}, 32),
    "one pass + CPD re-score of top 32": ({"decode_mode": "one_pass", "rerank_size": 32}, 32),
    "CPD beam 32": ({}, 32),
    "CPD beam 64": ({}, 64),
}


@torch.no_grad()
def measure(args) -> list[dict]:
    from recbole_diffgm import load_data_and_model
    from recbole_diffgm.compat import load_checkpoint

    _, model, _, _, valid, test = load_data_and_model(args.checkpoint, {"eval_batch_size": 512, "state": "WARNING"})
    model.eval()
    batches = list(test_batches({"valid": valid, "test": test}[args.split], args.users, args.batch))
    epoch = load_checkpoint(args.checkpoint)["epoch"]
    rows = []
    for label in args.modes:
        fields, beam = MODES[label]
        set_mode(model, fields, beam)
        ndcg = recall = 0.0
        start = time.process_time()
        for interaction, target in batches:
            scores = model.full_sort_predict(interaction, beam)
            rank = (scores > scores.gather(1, target[:, None])).sum(dim=1)  # ties in the target's favour
            hit = rank < 10
            recall += hit.sum().item()
            ndcg += (hit / torch.log2(rank.float() + 2)).sum().item()
        users = sum(len(target) for _, target in batches)
        rows.append({"checkpoint": Path(args.checkpoint).name, "epoch": epoch, "code": package_commit(),
                     "split": args.split, "users": users, "mode": label, "ndcg@10": round(ndcg / users, 4),
                     "recall@10": round(recall / users, 4),
                     "cpu_ms_per_user": round(1000 * (time.process_time() - start) / users, 1),
                     "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--users", type=int, default=1024, help="the first users of the split")
    parser.add_argument("--batch", type=int, default=128, help="users per decoding batch")
    parser.add_argument("--modes", default=",".join(list(MODES)[:3]),
                        type=lambda text: text.split(","), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="a JSON-lines file the rows are appended to")
    args = parser.parse_args()
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    for row in measure(args):
        line = json.dumps(row)
        print(line)  # a script's report, not library logging
        if args.out:
            with Path(args.out).open("a") as out:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
