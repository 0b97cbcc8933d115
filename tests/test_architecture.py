"""The floor plan holds (docs/architecture.md): imports point one way, rooms stay small, the
modalities have one shape, and the old import paths keep working."""
import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmdiff"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every mmdiff module ``path`` imports, at the top or inside a function (lazy imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # a submodule by name, else a name defined in the module ``base``
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:  # the most specific module a name resolves to
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycle_inside_the_package():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    assert sum(map(len, graph.values())) > 50  # the parser sees the imports at all
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_core_components_and_registry_never_import_upwards():
    mods = modules()
    floors = {"mmdiff.core": ("mmdiff.core",), "mmdiff.registry": (),
              "mmdiff.components": ("mmdiff.core", "mmdiff.registry", "mmdiff.components"),
              "mmdiff.data": ("mmdiff.core", "mmdiff.registry", "mmdiff.components", "mmdiff.data", "mmdiff.media")}
    for name, path in mods.items():
        for floor, allowed in floors.items():
            if name == floor or name.startswith(floor + "."):
                bad = [t for t in imports_of(name, path, set(mods)) if not t.startswith(allowed) or not allowed]
                assert not bad, f"{name} imports {bad}, above its floor"


def test_modules_stay_small_and_the_trainer_reads_in_one_sitting():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
    tree = ast.parse((PACKAGE / "training" / "loop.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 200


def test_one_sampling_path_with_few_parameters():
    from mmdiff.pipelines import Pipeline

    assert len(inspect.signature(Pipeline.solve).parameters) <= 8
    from mmdiff.modalities.image import ImagePipeline
    from mmdiff.modalities.text import TextPipeline
    from mmdiff.modalities.video import VideoPipeline
    for cls in (ImagePipeline, VideoPipeline, TextPipeline):
        params = inspect.signature(cls.__call__).parameters
        assert "options" in params and "sampler" not in params and "num_inference_steps" not in params, cls


@pytest.mark.parametrize("modality", ["image", "video", "text"])
def test_every_modality_has_the_same_shape(modality):
    folder = PACKAGE / "modalities" / modality
    assert (folder / "task.py").is_file() and (folder / "pipeline.py").is_file()


def test_scripts_import_the_package_not_each_other_by_path():
    for folder in ("recipes", "benchmarks", "tests"):
        for path in (ROOT / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            touches_path = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                            and isinstance(n.value, ast.Name) and n.value.id == "sys"]
            assert not touches_path, f"{path} edits sys.path"
            if folder != "tests":
                names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
                names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
                assert not [n for n in names if n.split(".")[0] in ("recipes", "benchmarks", "common")], path


def test_the_library_never_imports_diffusers():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.split(".")[0] == "diffusers"], path


def test_old_import_paths_still_work():
    import mmdiff

    assert callable(mmdiff.pipeline)
    assert importlib.import_module("mmdiff.training").Trainer.__name__ == "Trainer"
    assert "dpmpp_2m" in importlib.import_module("mmdiff.core.samplers").SAMPLERS
    assert importlib.import_module("mmdiff.core.dit").DiT.__name__ == "DiT"
    assert importlib.import_module("mmdiff.pipelines").pipeline is mmdiff.pipeline
    for name in ("ImageArgs", "ImageTask", "ImagePipeline"):
        assert hasattr(importlib.import_module("mmdiff.modalities.image"), name)
    for name in ("TextArgs", "TextTask", "TextPipeline", "TextModel"):
        assert hasattr(importlib.import_module("mmdiff.modalities.text"), name)
    for name in ("VideoArgs", "VideoTask", "VideoPipeline"):
        assert hasattr(importlib.import_module("mmdiff.modalities.video"), name)
