"""Test set-up. Without CUDA, Triton kernels run under the interpreter, which must be chosen before triton is
imported anywhere (docs/design.md "Testing without a GPU")."""

import importlib
import os
import sys
from pathlib import Path

import torch

_cuda = torch.cuda.is_available()
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # The minutes-long learning runs first (a stable sort, the same on every xdist worker): with `-n 2` the two
    # workers then start on the longest tests and the short ones fill in behind, instead of one worker finishing
    # a learning run alone at the end.
    items.sort(key=lambda item: 0 if "slow" in item.keywords else 1)
    if _cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: CI runs two pytest workers on two cores, and the small tensors here gain
    nothing from more (they lose a lot to oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BENCH = str(Path(__file__).resolve().parents[1] / "bench")


@pytest.fixture
def import_bench():
    """A bench/ script as a module (`import_bench("learning")`): bench/ is not a package, so it is on sys.path only
    while the script imports, and a script may import its siblings there."""
    def load(name: str):
        sys.path.insert(0, BENCH)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(BENCH)
    return load


@pytest.fixture
def poison_seed(monkeypatch):
    """`poison_seed(index, start, then=None)`: from the `start`-th replay sample of a `--seeds` group on, seed
    `index`'s rewards are NaN, so its NaN guard freezes it; `then(n)` runs after the n-th sample (a signal, say).
    Returns the unpoisoned `SeedReplay.sample`, to put back with monkeypatch.setattr."""
    from fastrsm.replay import Batch
    from fastrsm.seeds import SeedReplay

    real = SeedReplay.sample

    def arm(index: int, start: int, then=None):
        count = [0]

        def poisoned(self):
            b = real(self)
            count[0] += 1
            if count[0] >= start:
                r = b.reward.clone()
                r[index] = float("nan")
                b = Batch(b.obs, b.action, r, b.next_obs, b.terminated)
            if then is not None:
                then(count[0])
            return b

        monkeypatch.setattr(SeedReplay, "sample", poisoned)
        return real

    return arm
