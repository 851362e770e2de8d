"""The import-layer contract: common -> clients -> services -> trainer -> online -> loadtest/web -> bench.

`lint-imports` checks the contract declared in pyproject.toml ([tool.importlinter]); these
tests run it, make sure the contract still says what the README says, prove the tool catches
a reversed import, and find function-level imports of our own modules that hide a cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = [
    "bench",
    "services.loadtest | services.feedback_web",
    "services.online",
    "services.trainer",
    "services.policy | services.reward | services.experience",
    "services.clients",
    "services.common",
]
# Function-level imports of our own modules outside entry points, each with why it is deferred.
# None may hide a cycle (test_no_function_level_import_hides_a_cycle checks that for every one).
DEFERRED = {
    ("services/experience/embedded.py", "services.experience.recorder"): "SQLAlchemy only when --experience-db is set",
    ("services/experience/embedded.py", "services.experience.server"): "SQLAlchemy only when --experience-db is set",
    ("services/experience/embedded.py", "services.experience.store"): "SQLAlchemy only when --experience-db is set",
    ("services/reward/registry.py", "services.reward.similarity"): "torch/transformers only for declared model kinds",
    ("services/reward/registry.py", "services.reward.classifier"): "torch/transformers only for declared model kinds",
    ("services/trainer/loop.py", "services.trainer.nccl_push"): "NCCL process group only with weight_transfer=nccl",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lint(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: install the dev extra (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(pythonpath or cwd)}
    return subprocess.run([str(LINT_IMPORTS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_the_layer_contract():
    result = _lint(ROOT, "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contract_states_the_documented_layers():
    config = _pyproject()["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"services", "bench"}
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    assert contract["type"] == "layers"
    assert contract["layers"] == LAYERS
    # The only edges allowed against the layers: two composition roots. The policy process's entry point composes
    # the embedded experience store; the online demo starts the feedback pages beside the services it starts.
    assert contract.get("ignore_imports", []) == [
        "services.policy.__main__ -> services.experience.embedded",
        "services.online.demo -> services.feedback_web.launch",
    ]
    forbidden = {c["id"]: c for c in config["contracts"] if c["type"] == "forbidden"}
    assert set(forbidden["through-clients"]["forbidden_modules"]) == {"services.policy", "services.experience"}
    assert set(forbidden["trainer-reward"]["forbidden_modules"]) == {"services.reward"}


def test_lint_imports_fails_on_a_reversed_or_sideways_import(tmp_path):
    """The same kind of contract on a throwaway tree: a lower layer importing a higher one is reported."""
    package = tmp_path / "toy"
    for name, body in {
        "__init__.py": "",
        "common.py": "import toy.app\n",  # the violation: common reaches up
        "policy.py": "import toy.common\nimport toy.reward\n",  # the violation: a service imports a sibling
        "reward.py": "import toy.common\n",
        "app.py": "import toy.policy\n",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = toy\n\n[importlinter:contract:layers]\nname = toy layers\ntype = layers\n"
        "layers =\n    toy.app\n    toy.policy | toy.reward\n    toy.common\n"
    )
    result = _lint(tmp_path, "--no-cache")
    assert result.returncode != 0
    assert "toy.common -> toy.app" in result.stdout
    assert "toy.policy -> toy.reward" in result.stdout


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported when the file is imported, [(line, module) imported inside functions]) -- ours only."""
    tree = ast.parse(path.read_text(), str(path))
    deferred_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            deferred_nodes.update(id(inner) for inner in ast.walk(node) if inner is not node)
    eager, deferred = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        ours = [n for n in names if n.split(".")[0] in ("services", "bench") and _exists(n)]
        if id(node) in deferred_nodes:
            deferred.extend((node.lineno, n) for n in ours)
        else:
            eager.update(ours)
    return eager, deferred


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]], dict[str, Path]]:
    eager, deferred, paths = {}, {}, {}
    for path in sorted([*ROOT.joinpath("services").rglob("*.py"), *ROOT.joinpath("bench").rglob("*.py")]):
        module = _module_of(path)
        paths[module] = path
        eager[module], deferred[module] = _imports(path)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        for name in list(eager[module]):
            parts = name.split(".")
            eager[module].update(".".join(parts[:i]) for i in range(1, len(parts)))
    return eager, deferred, paths


def _reaches(eager: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        module = stack.pop()
        if module == goal:
            return True
        if module not in seen:
            seen.add(module)
            stack.extend(eager.get(module, ()))
    return False


def _is_entry_point(path: Path) -> bool:
    """Program entry points load their subcommands' stacks lazily; nothing imports them, so no cycle is possible."""
    return path.name == "__main__.py" or path.parent == ROOT / "bench"


def _package(module: str) -> str:
    """The program or layer a module belongs to: services.<name>, or bench."""
    return ".".join(module.split(".")[:2]) if module.startswith("services.") else module.split(".")[0]


def _package_graph(eager: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in eager.items():
        others = {_package(t) for t in targets} - {_package(module)}
        graph.setdefault(_package(module), set()).update(others)
    return graph


def _hidden_cycles(eager: dict[str, set[str]], deferred: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Deferred edges that close a cycle: module to module, or program to program (trainer -> online -> trainer)."""
    packages = _package_graph(eager)
    found = []
    for module, edges in deferred.items():
        for line, target in edges:
            if _reaches(eager, target, module):
                found.append(
                    f"{module} line {line}: imports {target} inside a function; {target} imports {module} back"
                )
            elif _package(target) != _package(module) and _reaches(packages, _package(target), _package(module)):
                found.append(
                    f"{module} line {line}: imports {target} inside a function; "
                    f"{_package(target)} imports {_package(module)} back"
                )
    return found


def test_no_function_level_import_hides_a_cycle():
    eager, deferred, _ = _graph()
    cycles = _hidden_cycles(eager, deferred)
    assert not cycles, "\n".join(cycles)


def test_the_cycle_check_finds_the_old_trainer_online_cycle():
    """What the tree had before: `rlhf-trainer online` imported the online loop inside a function."""
    eager = {
        "services.trainer.online": set(),
        "services.online.loop": {"services.trainer.config", "services.trainer"},
        "services.trainer.config": {"services.common.config"},
    }
    deferred = {"services.trainer.online": [(21, "services.online.loop")]}
    assert _hidden_cycles(eager, deferred) == [
        "services.trainer.online line 21: imports services.online.loop inside a function; "
        "services.online imports services.trainer back"
    ]
    assert _hidden_cycles(eager, {"services.online.loop": [(5, "services.trainer.config")]}) == []


def test_function_level_imports_of_our_modules_are_only_in_entry_points_or_allowed():
    _, deferred, paths = _graph()
    found = {
        (str(paths[module].relative_to(ROOT)), target): line
        for module, edges in deferred.items()
        if not _is_entry_point(paths[module])
        for line, target in edges
    }
    unexpected = sorted(
        f"{path}:{line}: {target}" for (path, target), line in found.items() if (path, target) not in DEFERRED
    )
    hint = "import these at the top of the module, or add them to DEFERRED with the reason:\n"
    assert not unexpected, hint + "\n".join(unexpected)
    stale = sorted(f"{path}: {target}" for path, target in DEFERRED if (path, target) not in found)
    assert not stale, "DEFERRED lists imports that are gone; remove them:\n" + "\n".join(stale)


def test_the_graph_walk_follows_eager_imports():
    """The graph walk on a known pair: the trainer imports the clients eagerly, the clients never import the trainer."""
    eager, _, _ = _graph()
    assert _reaches(eager, "services.trainer.loop", "services.clients.policy")
    assert not _reaches(eager, "services.clients.policy", "services.trainer.loop")


def test_every_package_is_installed_and_every_program_has_a_console_script():
    config = _pyproject()
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {_module_of(init) for init in ROOT.joinpath("services").rglob("__init__.py")}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    scripts = set(config["project"]["scripts"].values())
    programs = {f"{_module_of(main)}:main" for main in ROOT.joinpath("services").glob("*/__main__.py")}
    assert programs - scripts == set(), "give these programs a console script in [project.scripts]"
