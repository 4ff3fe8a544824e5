"""Benchmarks live in bench_*.py (pytest-benchmark; run `pytest bench/ --benchmark-only` on a GPU): collect
them as test modules, which pytest's default `test_*.py` pattern would not. Only files that define tests are
collected: the other bench_*.py are scripts (some import optional packages such as Ray at the top)."""

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if "\ndef test_" in file_path.read_text(encoding="utf-8"):
            return pytest.Module.from_parent(parent, path=file_path)
    return None
