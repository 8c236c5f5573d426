"""The house: who may import whom, and which module knows the run directory's names."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.update([module] + [f"{module}.{alias.name}" for alias in node.names])
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder, forbidden", [
    ("supernets", r"^(nat2|predictors|postprocess)\b"),
    ("predictors", r"^(torch|nat2|supernets|postprocess)\b"),
    ("postprocess", r"^(nat2|predictors)\b"),
    ("nat2/search", r"^nat2\.app\b"),
    ("nat2/rbifa", r"^nat2\.app\b"),
    ("nat2/space.py", r"^nat2\.app\b"),
    ("nat2/files.py", r"^nat2\.app\b"),
])
def test_layers_import_only_downwards(folder, forbidden):
    paths = [ROOT / folder] if folder.endswith(".py") else modules(folder)
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if re.match(forbidden, m)) for p in paths}
    assert not {k: v for k, v in bad.items() if v}


def test_no_stage_imports_another():
    stages = {p.stem for p in modules("nat2/app/stages")} - {"__init__"}
    for path in modules("nat2/app/stages"):
        others = {m for m in imports(path) if m.startswith("nat2.app.stages.") and m.split(".")[3] in stages}
        assert not others - {f"nat2.app.stages.{path.stem}"}, path.name
    importers = {p.relative_to(ROOT).as_posix() for p in modules("nat2") if p.parent.name != "stages"
                 and any(m.startswith("nat2.app.stages.") for m in imports(p))}
    assert importers == {"nat2/app/cli.py", "nat2/app/pipeline.py"}


RUN_DIR_NAMES = re.compile(r"""["'/](config\.yaml|env\.json|state\.json|archive\.json|stats\.json|final\.json|"""
                           r"""selected\.json|result\.json|final\.pt|best\.pt|last\.pt|tfsearch/|iter_|supernet/|"""
                           r"""search/|finetune/|final/|latency/|check_\{)|f"w\{width""")


def test_only_rundir_knows_the_run_directory_names():
    knowing = {p.relative_to(ROOT).as_posix() for p in modules("nat2") if RUN_DIR_NAMES.search(p.read_text())}
    assert knowing == {"nat2/app/rundir.py"}


def test_no_horovod_anywhere_in_our_code_or_its_imports():
    """Distributed work is torch.distributed + torchrun. `ofa` imports horovod only inside its
    DistributedMetric / DistributedTensor methods, which nothing here uses."""
    ours = [p for folder in ("nat2", "supernets", "predictors", "postprocess", "scripts") for p in modules(folder)]
    assert not {p.name for p in ours if any(m.split(".")[0] == "horovod" for m in imports(p))}
    code = "import sys, nat2.app.cli, nat2.search, nat2.rbifa, postprocess; print('horovod' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_command_lines_strategies_are_the_librarys():
    from nat2.app.choices import STRATEGIES
    from nat2.rbifa.training_free import STRATEGIES as TRAINING_FREE

    assert STRATEGIES == ("nat2", *TRAINING_FREE)


def test_the_command_lines_latency_backends_are_the_librarys():
    from nat2.app.choices import BACKENDS
    from supernets.latency import BACKENDS as MEASURED

    assert BACKENDS == MEASURED
