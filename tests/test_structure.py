"""The structure the code promises (one loop, one schedule, kernels that stand alone): checked on the
source itself and on tiny real runs."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

from fastrsm import loop

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--env", "InvertedPendulum-v4", "--preset", "smoke", "--device", "cpu", "--quiet",
        "--total-steps", "300", "--warmup-steps", "100", "--eval-every", "300", "--eval-episodes", "1",
        "--batch-size", "32", "--particles", "4", "--diffusion-steps", "3", "--hidden", "16", "--log-every", "100",
        "--reverse-samples", "4"]


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules imported at module level (not inside functions) by the file at `path`, as absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.add(mod)
                if not node.module:
                    out.update(f"{mod}.{a.name}" for a in node.names)
            else:
                out.add(node.module or "")
    return out


def _library_modules() -> dict[str, Path]:
    mods = {}
    for path in (ROOT / "fastrsm").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    for path in (ROOT / "kernels").glob("*.py"):
        mods["fastrsm.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return mods


def test_kernels_import_nothing_above_them():
    allowed = ("torch", "triton", "__future__", "functools", "typing", "importlib", "os", "math")
    for path in (ROOT / "kernels").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # every import, function-level ones too
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # a sibling kernel module
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_no_import_circle_in_the_library():
    mods = _library_modules()
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in _module_imports(path, pkg) if m in mods and m != name}
    # a package's __init__ importing its own submodules is not a circle of the design
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_backend_imports_kernels_lazily_and_the_references_need_no_triton():
    src = (ROOT / "fastrsm" / "backend.py").read_text(encoding="utf-8")
    assert "from .kernels import fused" in src  # inside make_ops only
    assert all("fastrsm" not in ln for ln in (ROOT / "kernels" / "reference.py").read_text().splitlines()
               if ln.startswith(("import", "from")))


def test_train_and_bench_run_the_same_loop_body(tmp_path, monkeypatch):
    """`fastrsm-train` (fastrsm.runner), `fastrsm-bench` and bench/bench_train_throughput.py step through
    loop.vector_step."""
    calls: list[str] = []
    original = loop.vector_step

    def counting(*args, **kw):
        import inspect

        calls.append(inspect.stack()[1].frame.f_globals["__name__"])
        return original(*args, **kw)

    monkeypatch.setattr(loop, "vector_step", counting)
    from fastrsm.bench import main as bench_main
    from fastrsm.train import main as train_main

    assert train_main([*TINY, "--algo", "dpmd", "--run-dir", str(tmp_path / "run")]) == 0
    assert bench_main(["--preset", "smoke", "--device", "cpu", "--updates", "2", "--env-steps", "10",
                       "--warmup-updates", "1", "--act-calls", "1", "--fill", "256", "--backends", "torch"]) == 0
    assert calls.count("fastrsm.runner") == 300 and calls.count("fastrsm.bench") > 0
    assert "vector_step" in (ROOT / "bench" / "bench_train_throughput.py").read_text()

    # every metric the agent returns is a column of train.csv (DPMD's w_mean and q_run_mean among them)
    with open(tmp_path / "run" / "train.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert {"loss_q", "loss_pi", "w_mean", "q_run_mean"} <= set(header)


def test_a_new_metric_appears_in_train_csv(tmp_path, monkeypatch):
    from fastrsm.agents.sdac import SDAC
    from fastrsm.train import main as train_main

    original = SDAC.policy_loss

    def with_extra(self, next_obs, drawn):
        loss, metrics = original(self, next_obs, drawn)
        return loss, {**metrics, "brand_new_metric": loss.detach() * 0 + 7}

    monkeypatch.setattr(SDAC, "policy_loss", with_extra)
    assert train_main([*TINY, "--algo", "sdac", "--run-dir", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert "brand_new_metric" in rows[0] and float(rows[-1]["brand_new_metric"]) == 7.0


@pytest.mark.parametrize("name", ["dpmd", "sdac", "sac", "td3", "qsm", "qvpo", "dipo"])
def test_one_list_of_algorithms(name):
    from fastrsm.agents import AGENTS, check_algo
    from fastrsm.config import ConfigError

    assert name in AGENTS and AGENTS[name].algo == name
    check_algo(name)
    with pytest.raises(ConfigError, match="choose one of dpmd, sdac, sac"):
        check_algo("trpo")


def test_every_algorithm_says_what_it_is_and_where_it_comes_from(capsys):
    from fastrsm.agents import AGENTS
    from fastrsm.train import main as train_main

    assert train_main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for name, cls in AGENTS.items():
        assert cls.about and "arXiv" in cls.about, name
        assert f"{name}: {' '.join(cls.about.split())}" in help_text, name
