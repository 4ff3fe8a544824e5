"""bench/README.md indexes bench/: every script and document there has its line, and every name it lists exists.
A new benchmark or diagnostic that is not indexed fails here."""

from __future__ import annotations

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_every_bench_file_is_indexed_and_every_indexed_file_exists() -> None:
    index = (BENCH / "README.md").read_text(encoding="utf-8")
    files = {p.name for p in BENCH.iterdir() if p.is_file() and p.suffix in (".py", ".sh", ".md")} - {"README.md"}
    missing = sorted(f for f in files if f not in index)
    assert not missing, f"not in bench/README.md: {missing}"
    named = set(re.findall(r"`([A-Za-z0-9_]+\.(?:py|sh))`", index))
    named |= set(re.findall(r"\]\(([A-Za-z0-9_]+\.md)\)", index))
    assert named and not sorted(n for n in named if not (BENCH / n).is_file())
