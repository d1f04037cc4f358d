"""The package's folders form layers: a folder imports only folders in layers below its own.

Read from the source with `ast` (nothing is imported or executed), so imports inside functions
count as much as those at the top of a file. A new folder must be placed in LAYERS; an import
that breaks the order fails here with the file, line and the two folders.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rzero"

# Bottom to top. Folders in one layer are peers: they may not import each other either
# (this is how "rewards never imports backbones" and "losses never import rewards" hold).
LAYERS: list[tuple[str, ...]] = [
    ("utils",),                            # files, seeds, logging, FSDP sharding: torch only
    ("config", "diffusion"),               # dataclass configs; schedules and samplers
    ("world",),                            # the built-in world: scenes, renders, its small networks
    ("backbones", "rewards", "losses", "data"),  # teachers (+ LoRA); rewards; losses; prompt sources
    ("generator",),                        # the few-step generator on a backbone, snapshots
    ("eval",),                             # evaluation protocols and reports
    ("trainers",),                         # the engine and one file per algorithm
    ("apps",),                             # bench, report, demo, serve, export
    ("cli",),                              # argv -> config -> a library call
]
RANK = {folder: i for i, layer in enumerate(LAYERS) for folder in layer}

# The package root is the package's face only: no module of the library lives there.
ROOT_FILES = {"__init__.py", "__main__.py"}

# (importing module, imported module) pairs allowed against the order, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every rzero import in `path`, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from .. import world` imports a folder by name: count each name as a module.
            names = [f"{target}.{a.name}" for a in node.names] if target == "rzero" else [target]
            found += [(name, node.lineno) for name in names]
    return [(name, line) for name, line in found if name == "rzero" or name.startswith("rzero.")]


def _folder(module: str) -> str | None:
    """The top-level folder of a module name (None for the package root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src_module = _module_name(path)
        src = _folder(src_module)
        if src is None:
            continue  # a root file: test_root_holds_only_the_face covers it
        for target, line in _imported(path):
            dst = _folder(target)
            if dst is None or dst == src or (src_module, target) in EXCEPTIONS:
                continue  # the root's face (rzero.__version__), or inside one folder
            if RANK[dst] >= RANK[src]:
                where = "the same layer as" if RANK[dst] == RANK[src] else "a layer above"
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src}/ imports {target} "
                                f"({dst}/ is in {where} {src}/)")
    return problems


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}  # world/ has no __init__
    assert folders - set(RANK) == set(), "place the new folder in LAYERS"
    assert set(RANK) - folders == set(), "LAYERS names a folder that does not exist"


def test_no_folder_imports_a_folder_above_it():
    assert _violations() == []


def test_root_holds_only_the_face():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ROOT_FILES)
    assert loose == [], f"modules at the package root belong in a folder: {loose}"
    root_imports = [t for t, _ in _imported(PACKAGE / "__init__.py")]
    assert root_imports == [], "rzero/__init__.py imports nothing, so every layer may read __version__"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """A lazy `from ..trainers import` inside a function of eval/ is reported (guards the parser)."""
    pkg = tmp_path / "rzero"
    for folder in RANK:
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "eval" / "bad.py").write_text("def f():\n    from ..trainers import engine\n")
    (pkg / "rewards" / "peer.py").write_text("import rzero.backbones.lora\n")
    (pkg / "cli" / "ok.py").write_text("from .. import eval\nfrom rzero.apps import bench\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    found = _violations()
    assert len(found) == 2, found
    assert "eval/bad.py:2: eval/ imports rzero.trainers" in found[0] and "a layer above" in found[0]
    assert "rewards/peer.py:1: rewards/ imports rzero.backbones.lora" in found[1] and "same layer" in found[1]
