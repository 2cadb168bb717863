"""The code's shape: the layers import only downwards, the README's Layout names what is there,
and code comments cite nothing outside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top: a module may import its own layer and those below it, never one above.
LAYERS = (
    ("errors", "settings"),
    ("model_sources",),
    ("annotators",),
    ("conditions",),
    ("pipelines",),
    ("png_info", "download", "availability"),
    ("a1111",),
    ("ui",),
    ("cli", "app"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def tracked_python() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).exists()]


def top_name(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_tops(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_runs_back_up_the_layers():
    upward = []
    for path in tracked_python():
        own = top_name(path)
        if own not in RANK:
            continue  # tests, benchmarks and testkit stand on top of everything
        for name in imported_tops(path) & set(RANK):
            if RANK[name] > RANK[own]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
        assert not imported_tops(path) & {"tests", "benchmarks", "testkit"}, path
    assert not upward


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("    "))


def test_the_readmes_layout_matches_the_tree():
    block = layout_block()
    top_level = re.findall(r"^ {4}(\S+)", block, flags=re.M)
    in_pipelines = re.findall(r"^ {6}(\S+)", block, flags=re.M)
    assert top_level and in_pipelines, "the Layout section lists no paths"
    for entry in top_level:
        assert (ROOT / entry).exists(), f"README Layout names {entry}, which does not exist"
    for entry in in_pipelines:
        path = ROOT / "pipelines" / entry
        assert path.exists(), f"README Layout names pipelines/{entry}, which does not exist"
    tops = {
        name.split("/")[0]
        for name in subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        if name.endswith(".py") or "/" in name
    }
    tops -= {".ci"}
    missing = {top for top in tops if top.removesuffix(".py") not in block}
    assert not missing, f"README Layout does not name {sorted(missing)}"
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        if path.name != "__init__.py":
            assert path.stem in block, f"README Layout does not name pipelines/{path.name}"


def test_code_cites_nothing_outside_the_repository():
    cites = re.compile(r"DESIGN\.md|\b[Ii]ssue [0-9]+\b")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in tracked_python()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if cites.search(line) and path.name != "test_layout.py"
    ]
    assert not found
