"""The floor plan holds: study/ is a few front doors over sub-packages, each sub-package says in
its docstring which others it may import ("May import: ..."), every import in study/ (deferred
ones included) keeps to that, and no module of study/ reaches itself through its imports.
analysis/ reads the run record through one module of study/, the contract, and nothing else."""
import ast
import re
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "study"
ANALYSIS = STUDY.parent / "analysis"
CONTRACT = "study.record.contract"
FRONT_DOORS = {"__init__", "run", "decide", "server", "models"}


def packages() -> list[str]:
    return sorted(p.name for p in STUDY.iterdir() if (p / "__init__.py").is_file())


def module_name(path: Path) -> str:
    parts = path.relative_to(STUDY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The study modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("study")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study"):
            submodules = {f"{node.module}.{a.name}" for a in node.names}
            found |= {m for m in submodules if _exists(m)} or {node.module}
    return found


def _exists(module: str) -> bool:
    base = STUDY.parent.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def allowed(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((STUDY / package / "__init__.py").read_text())) or ""
    line = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
    assert line, f"study/{package}/__init__.py: its docstring must say what it may import ('May import: ...')"
    text = line.group(1)
    return set() if text.strip().startswith("nothing") else {p for p in packages() if re.search(rf"\b{p}\b", text)}


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in packages() else "front"


def test_study_is_front_doors_over_sub_packages():
    top = {p.stem for p in STUDY.glob("*.py")}
    assert top <= FRONT_DOORS and len(top) <= 6, f"modules at study/'s top: {sorted(top - FRONT_DOORS)}"
    assert {"settings", "data", "train", "measure", "record", "point", "sweep"} <= set(packages())


@pytest.mark.parametrize("package", packages())
def test_each_sub_package_imports_only_what_its_docstring_allows(package):
    may = allowed(package) | {package}
    wrong = [f"{module_name(f)} imports {m}" for f in sorted((STUDY / package).rglob("*.py"))
             for m in sorted(imports(f)) if floor(m) not in may]
    assert not wrong, f"study/{package} may import {sorted(may)}; but:\n" + "\n".join(wrong)


def test_the_allowed_imports_run_one_way():
    """Package A may import B, and B may import A, never both: the floors form an order."""
    may = {p: allowed(p) for p in packages()}
    both = [(a, b) for a in may for b in may[a] if a < b and a in may.get(b, set())]
    assert not both, f"sub-packages allowed to import each other: {both}"


def test_no_module_reaches_itself_through_its_imports():
    graph = {module_name(f): {m for m in imports(f) if m != module_name(f)} for f in STUDY.rglob("*.py")}
    graph = {m: {t for t in targets if t in graph and not m.startswith(t + ".")} for m, targets in graph.items()}
    state, circles = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_checks_see_a_wrong_import(tmp_path, monkeypatch):
    """The check can fail: an import from a floor above is caught by the same reading."""
    probe = STUDY / "settings" / "config.py"
    source = probe.read_text() + "\nfrom study.train import trainer  # a floor above\n"
    fake = tmp_path / "study" / "settings" / "config.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    assert "study.train.trainer" in imports(fake) and floor("study.train.trainer") not in allowed("settings")


def test_analysis_imports_of_study_nothing_but_the_run_record_contract():
    """Deferred imports included; the contract itself imports nothing of study."""
    wrong = [f"analysis/{f.name} imports {m}" for f in sorted(ANALYSIS.rglob("*.py"))
             for m in sorted(imports(f)) if m != CONTRACT]
    assert not wrong, "\n".join(wrong)
    assert not imports(STUDY / "record" / "contract.py")
