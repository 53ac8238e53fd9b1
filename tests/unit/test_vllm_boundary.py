"""A rule of the boundary with vLLM, held on the source: who changes vLLM's objects.

Only `t2l_vllm/vllm_plugin/` imports vLLM (an import-linter contract in
pyproject.toml, checked in CI), and within it only `internals.py` assigns
attributes on vLLM's objects or classes (a patch, a hook): everywhere else a vLLM
object is used as vLLM documents it. The check reads every module's syntax tree:
an attribute assignment, `setattr` or `delattr` whose target is a name bound to
something imported from vLLM, or a parameter that carries a vLLM object by this
project's naming (`engine_client`, vLLM's request models as `request`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "t2l_vllm"
INTERNALS = PACKAGE / "vllm_plugin" / "internals.py"
VLLM_OBJECT_PARAMETERS = {"engine_client", "request", "serving_models"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def vllm_names(tree: ast.AST) -> set[str]:
    """Names a module binds to vLLM: `import vllm...` and `from vllm... import X`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "vllm"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            names |= {a.asname or a.name for a in node.names}
    return names


def root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def assignments_to_vllm(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    watched = vllm_names(tree) | VLLM_OBJECT_PARAMETERS
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") and node.args:
            if root(node.args[0]) in watched:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
        for target in targets:
            if isinstance(target, ast.Attribute) and root(target) in watched:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(target)} = ...")
    return found


def test_only_internals_assigns_attributes_on_vllm_objects_or_classes():
    found = [line for path in modules() if path != INTERNALS for line in assignments_to_vllm(path)]
    assert not found, "assignments on vLLM objects outside vllm_plugin/internals.py:\n" + "\n".join(found)


def test_the_check_sees_the_patches_internals_makes():
    """The rule is not vacuous: it finds internals.py's own patches."""
    found = assignments_to_vllm(INTERNALS)
    assert any("lora_ops.bgmv_shrink" in line for line in found) and any("engine_client.shutdown" in line for line in found)
