"""The cost of CPD's legality bookkeeping alone as the catalogue grows, with a denoiser that costs nothing.

    python benchmarks/sid_patterns.py [--sizes=12000,100000,1000000] [--beam=32] [--users=32]

Random distinct 8-digit SIDs of 256 codes (seeded) stand for the catalogue; the denoiser returns the same fixed
log-probabilities for every beam, so what is timed is what grows with the catalogue in ``decoding.SIDPatterns`` and
``cpd_beam_search``: building the per-(digit, code) groups, and following, narrowing and merging the beam's
matching SIDs. CPU time per user, one thread. Writes ``--out`` (markdown, the command at the top).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from recbole_diffgm.benchmark import machine_description
from recbole_diffgm.model.decoding import SIDPatterns, cpd_beam_search

N_DIGIT, N_CODES = 8, 256


def measure(size: int, beam: int, users: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    sids = torch.randint(N_CODES, (size, N_DIGIT), generator=generator).unique(dim=0)
    start = time.process_time()
    patterns = SIDPatterns(sids, N_CODES)
    build = time.process_time() - start
    log_probs = torch.randn(users, 1, N_DIGIT, N_CODES, generator=generator).mul(3).log_softmax(-1)

    def denoise(codes: torch.Tensor) -> torch.Tensor:
        return log_probs.expand(users, codes.shape[1], N_DIGIT, N_CODES)

    cpd_beam_search(denoise, patterns, users, beam)  # warm-up
    start = time.process_time()
    cpd_beam_search(denoise, patterns, users, beam)
    return {"sids": len(sids), "largest group": patterns.groups.shape[-1], "build s": build,
            "ms per user": 1000 * (time.process_time() - start) / users}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12000,100000,1000000")
    parser.add_argument("--beam", type=int, default=32)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--out", default="results/sid-patterns.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(int(size), args.beam, args.users) for size in args.sizes.split(",")]
    lines = [f"# CPD's legality bookkeeping as the catalogue grows\n\n```bash\npython {' '.join(sys.argv)}\n```\n",
             f"Machine: {machine_description()}. Random distinct {N_DIGIT}-digit SIDs of {N_CODES} codes, beam "
             f"{args.beam}, {args.users} users, a denoiser that costs nothing: the bookkeeping alone, CPU time.\n",
             "| SIDs | largest (digit, code) group | groups built, s | beam bookkeeping, ms per user |",
             "|---|---|---|---|"]
    lines += [f"| {row['sids']:,} | {row['largest group']:,} | {row['build s']:.2f} | {row['ms per user']:.2f} |"
              for row in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
