"""The package's shape: imports flow one way between layers, no module imports itself back, one name per module.

Imports are read from the source (``ast``), including those inside functions, so a lazy import that
closes a cycle is caught too.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import export3d

PACKAGE = Path(export3d.__file__).parent
KERNELS = PACKAGE.parent / "kernels"  # installed as export3d.kernels (pyproject package-dir)

# Lower number = lower layer; a module may import its own layer's modules and lower layers only.
LAYERS = {
    "kernels": 0,
    "utils": 0,
    "cameras": 0,
    "model": 1,
    "data": 1,
    "faces": 1,
    "evaluation": 2,
    "training": 3,
    "animation": 3,
    "profiling": 4,
    "train": 5,
    "evaluate": 5,
    "animate": 5,
    "ablation": 5,
    "profile": 5,
    "gpucheck": 5,
    "app": 5,
}


def module_files() -> dict[str, Path]:
    files = {}
    for root, prefix in ((PACKAGE, "export3d"), (KERNELS, "export3d.kernels")):
        for path in root.rglob("*.py"):
            if prefix == "export3d" and path.is_relative_to(KERNELS):
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([prefix, *parts])] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports (``from P import X`` counts as P.X when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: drop level - 1 trailing parts of the package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_the_imports():
    graph = import_graph()
    assert "export3d.model.network" in graph["export3d.model"]
    assert "export3d.kernels.eadaln" in graph["export3d.model.layers"]
    assert "export3d.training.loop" in graph["export3d.train"]
    assert "export3d.training.loop" in graph["export3d.training.ablation_runs"]
    assert "export3d.evaluation.loading" in graph["export3d.training.ablation_results"]
    assert {"export3d.training.ablation_runs", "export3d.training.ablation_results"} <= graph["export3d.ablation"]


def test_no_import_cycle():
    # Parent packages import their children (``export3d`` imports ``export3d.model``); a child importing a
    # sibling through the package is normal, so only the edges between modules are checked.
    graph = {m: {t for t in deps if not m.startswith(t + ".")} for m, deps in import_graph().items()}
    graph.pop("export3d")
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_belongs_to_a_layer():
    unplaced = {layer(m) for m in import_graph()} - set(LAYERS) - {None}
    assert not unplaced, f"add these to LAYERS (and to the README's layer list): {sorted(unplaced)}"


def test_imports_flow_down_the_layers():
    wrong = []
    for module, deps in import_graph().items():
        if layer(module) is None:
            continue
        for dep in deps:
            if layer(dep) is not None and LAYERS[layer(dep)] > LAYERS[layer(module)]:
                wrong.append(f"{module} imports {dep}")
            elif layer(dep) != layer(module) and LAYERS[layer(dep) or "kernels"] == LAYERS[layer(module)]:
                wrong.append(f"{module} imports its peer layer {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_pre_layout_module_paths_are_gone():
    # 0.1.0 was never released: modules live in one place only, with no aliases for where they used to be
    for old in ("export3d._moved", "export3d.config", "export3d.render", "export3d.layers", "export3d.checkpoint",
                "export3d.model.export3d", "export3d.data.cameras", "export3d.model.render.cameras"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


def test_package_import_stays_light():
    code = ("import sys, export3d, export3d.kernels, export3d.data, export3d.evaluation; "
            "heavy = [m for m in ('lpips', 'xformers', 'export3d.training', 'export3d.evaluation.scoring', "
            "'export3d.data.synthetic', 'cv2', 'mediapipe', 'dlib') if m in sys.modules]; print(heavy)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert listed == on_disk, f"pyproject.toml [tool.setuptools] packages: missing {sorted(on_disk - listed)}, " \
                              f"extra {sorted(listed - on_disk)}"


def test_one_module_per_stem():
    # a newcomer should not meet two modules of one name (three cameras.py once held one convention); the model's
    # and the training's config.py are each the config of their own package
    stems = {}
    for name, path in module_files().items():
        if path.name != "__init__.py":
            stems.setdefault(path.stem, []).append(name)
    repeated = {stem: names for stem, names in stems.items() if len(names) > 1 and stem not in ("__main__", "config")}
    assert not repeated, repeated
