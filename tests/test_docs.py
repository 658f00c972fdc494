"""The front page and the docs: the two commands CI runs, the generated headline table, links that resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert commands[0].startswith("pip install torch==2.13.0 && pip install -e . && python run_recbole_diffgm.py")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_headline_table_is_the_one_the_results_give():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "headline.py"), "--check"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken
