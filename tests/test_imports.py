"""fusion/ is a layered package: its modules import each other without a cycle, and none imports Ray.

The graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for every ``import`` or
``from ... import`` in ``a``, at module level or deferred into a function body (a deferred import that closes a
cycle only hides it), and every ``lazy("b")`` (:mod:`fusion.lazy`); not the imports under ``if TYPE_CHECKING:``,
which never run. ``from fusion.x import y`` points at the module ``fusion.x.y`` when there is one, else at
``fusion.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

FUSION = Path(__file__).resolve().parents[1] / "fusion"


def module_name(path: Path, root: Path = FUSION) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_package(root: Path = FUSION) -> dict[str, ast.Module]:
    """Every module under ``root`` by its dotted name (a package by the name of its ``__init__``)."""
    return {module_name(p, root): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}


def _imports(node: ast.AST):
    """The import statements and ``lazy("...")`` calls under ``node``, leaving out ``if TYPE_CHECKING:`` blocks."""
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        for child in node.orelse:
            yield from _imports(child)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "lazy"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        yield ast.Import(names=[ast.alias(name=str(node.args[0].value))])
    for child in ast.iter_child_nodes(node):
        yield from _imports(child)


def import_graph(modules: dict[str, ast.Module], prefix: str = "fusion") -> dict[str, set[str]]:
    """``name`` -> the modules of ``modules`` it imports (module level or deferred)."""
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        package = name if _is_package(name, modules) else name.rpartition(".")[0]
        targets = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name and t.split(".")[0] == prefix}
    return graph


def _is_package(name: str, modules: dict[str, ast.Module]) -> bool:
    return any(other.startswith(name + ".") for other in modules)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def imports_ray(tree: ast.Module) -> bool:
    """Whether any statement of ``tree`` (at any depth) imports ``ray``, or names it to a lazy import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "ray":
            return True
        if (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.split(".")[0] == "ray"
        ):
            return True
    return False


def _parse(sources: dict[str, str]) -> dict[str, ast.Module]:
    return {name: ast.parse(text) for name, text in sources.items()}


def test_the_modules_of_fusion_import_each_other_without_a_cycle():
    modules = parse_package()

    cycle = find_cycle(import_graph(modules))

    assert len(modules) > 40 and "fusion.models.params" in modules
    assert cycle is None, "import cycle in fusion/: " + " -> ".join(cycle)


def test_no_module_of_fusion_imports_ray():
    modules = parse_package()

    with_ray = sorted(name for name, tree in modules.items() if imports_ray(tree))

    assert with_ray == []


def test_the_cycle_check_finds_a_cycle_closed_by_a_deferred_import_of_a_submodule():
    modules = _parse(
        {
            "fusion.models": "",
            "fusion.models.params": "from fusion.models import conv\n",
            "fusion.models.conv": "import numpy\n",
            "fusion.models.kernels": "def one_input():\n    from fusion.models.params import forward\n",
        }
    )
    assert find_cycle(import_graph(modules)) is None

    modules["fusion.models.conv"] = _parse({"x": "from fusion.models import kernels\n"})["x"]
    cycle = find_cycle(import_graph(modules))

    assert cycle == ["fusion.models.conv", "fusion.models.kernels", "fusion.models.params", "fusion.models.conv"]


def test_imports_under_type_checking_make_no_edge_and_lazy_ones_do():
    modules = _parse(
        {
            "fusion.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fusion.b import B\n",
            "fusion.b": "from fusion.a import A\n",
            "fusion.c": "from fusion.lazy import lazy\nb = lazy('fusion.b')\n",
            "fusion.lazy": "",
        }
    )

    graph = import_graph(modules)

    assert graph == {
        "fusion.a": set(),
        "fusion.b": {"fusion.a"},
        "fusion.c": {"fusion.b", "fusion.lazy"},
        "fusion.lazy": set(),
    }


def test_the_ray_check_finds_an_import_in_a_function_and_a_lazy_one():
    modules = _parse(
        {
            "fusion.a": "import numpy\n",
            "fusion.c": "def remote():\n    import ray.util\n",
            "fusion.d": "from fusion.lazy import lazy\nray = lazy('ray')\n",
        }
    )

    found = [imports_ray(tree) for tree in modules.values()]

    assert found == [False, True, True]
