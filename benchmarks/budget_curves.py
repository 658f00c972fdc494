"""Is it the model or the budget? Validation curves of the same rows at two budgets, on one plot.

    python benchmarks/budget_curves.py --rows=SASRec-SASRec-strong-seed2020,DigitClassifier-DigitClassifier-cpu-seed2020 \\
        --budgets="60 CPU-min:results/amazon-beauty-curves,240 CPU-min:results/budget-4h/amazon-beauty-curves" \\
        --out=results/budget-4h/curves-60-vs-240

Each row's learning curve (``<run>.csv``, written by every benchmark run: one line per validation) is drawn as
item-level validation NDCG@10 against the training CPU-minutes spent (the budget's clock, validation not counted),
one colour per row and one line style per budget. Writes ``<out>.png`` and ``<out>.md`` (per row and budget: epochs,
best validation N@10 and the CPU-minute it was reached, the last validation N@10), and skips a curve that a budget
does not have yet, saying so.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from recbole_diffgm.files import write_text_atomically  # noqa: E402

LINE_STYLES = ("-", "--", ":", "-.")


def read_curve(path: Path) -> list[dict[str, float]]:
    with path.open() as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def parse_budgets(text: str) -> list[tuple[str, list[Path]]]:
    """``LABEL:FOLDER[+FOLDER...],...`` -> ``[(label, folders)]``: a budget's curves may lie in several run stores
    (rows run with different config files), each row's taken from the first folder that has it."""
    budgets = []
    for part in filter(None, text.split(",")):
        label, sep, folders = part.partition(":")
        if not sep:
            raise SystemExit(f"error: --budgets '{part}': give LABEL:FOLDER")
        budgets.append((label.strip(), [Path(folder.strip()) for folder in folders.split("+") if folder.strip()]))
    return budgets


def summary_line(row: str, budget: str, curve: list[dict[str, float]]) -> str:
    best = max(reversed(curve), key=lambda point: point["ndcg@10"])  # RecBole keeps the later of two equal scores
    return (f"| {row} | {budget} | {len(curve)} | {best['ndcg@10']:.4f} (epoch {int(best['epoch'])}, "
            f"{best['train_cpu_seconds'] / 60:.0f} CPU-min) | {curve[-1]['ndcg@10']:.4f} | "
            f"{curve[-1]['train_cpu_seconds'] / 60:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", required=True, help="curve names (run folder names), comma-separated")
    parser.add_argument("--budgets", required=True, help="LABEL:FOLDER[+FOLDER...] of curves, comma-separated")
    parser.add_argument("--out", required=True, help="output path without suffix (.png and .md are written)")
    args = parser.parse_args()
    rows, budgets = [row for row in args.rows.split(",") if row], parse_budgets(args.budgets)

    figure, axis = plt.subplots(figsize=(8, 5))
    lines = ["| run | budget | validations | best valid N@10 (epoch, training CPU-min) | last valid N@10 | "
             "training CPU-min at the last |", "|---|---|---|---|---|---|"]
    missing = []
    for colour, row in enumerate(rows):
        for style, (label, folders) in zip(LINE_STYLES, budgets):
            path = next((folder / f"{row}.csv" for folder in folders if (folder / f"{row}.csv").is_file()), None)
            if path is None:
                missing.append(f"{row} at {label} (not in {' or '.join(map(str, folders))}: not run yet)")
                continue
            curve = read_curve(path)
            axis.plot([point["train_cpu_seconds"] / 60 for point in curve], [point["ndcg@10"] for point in curve],
                      linestyle=style, color=f"C{colour}", marker=".", label=f"{row}, {label}")
            lines.append(summary_line(row, label, curve))
    axis.set_xlabel("training CPU-minutes (validation not counted)")
    axis.set_ylabel("validation NDCG@10 (item level)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    out = Path(args.out)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    command = " ".join(["python benchmarks/budget_curves.py", f"--rows={args.rows}", f'--budgets="{args.budgets}"',
                        f"--out={args.out}"])
    text = [f"# Validation curves at two budgets\n\n```bash\n{command}\n```\n", *lines]
    if missing:
        text += ["", "Not drawn: " + "; ".join(missing) + "."]
    write_text_atomically("\n".join(text) + "\n", out.with_suffix(".md"))
    print("\n".join(text))


if __name__ == "__main__":
    main()
