"""lorafit's imports go one way: down the layers of the pipeline, never in a cycle.

Read statically (ast), so function-level imports count, and so do imports under TYPE_CHECKING: a module
that names a type from a higher layer depends on it. The layers are documented in lorafit/__init__.py."""

import ast
from pathlib import Path

import lorafit

PACKAGE = Path(lorafit.__file__).parent

# Lower numbers are lower layers; a module may import its own layer and the ones below. A layer is a subpackage
# of lorafit (its __init__.py is a module of that layer like the others).
LAYERS = {
    "core": 0,  # errors, paths, facts and probes every stage reads (stdlib only at import)
    "recipe": 1,  # the schema and its loader
    "runs": 2,  # the run directory, run.json, the registry, plots of a run
    "data": 3,  # sources, formats, tokenized datasets
    "models": 3,  # model loading, adapters, memory plan, generation
    "train": 4,  # the training run
    "artifacts": 5,  # eval, merge, export, generate
    "serve": 5,  # lorafit serve: adapters behind an OpenAI-compatible API
    "cli": 6,  # the commands, and the launchers that run them
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """lorafit modules `name` imports anywhere in its body (`from lorafit import x` names module x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name and m != "lorafit"}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported(name, path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> str | None:
    layer = module.removeprefix("lorafit.").split(".")[0]
    return layer if layer in LAYERS else None


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module are the import cycles."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def test_every_module_has_a_layer():
    assert [m for m in all_modules() if m != "lorafit" and layer_of(m) is None] == []


def test_no_import_cycles():
    assert strongly_connected(graph()) == []


def test_imports_only_go_down_the_layers():
    upward = [
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in graph().items()
        if a != "lorafit"
        for b in sorted(targets)
        if LAYERS[layer_of(b)] > LAYERS[layer_of(a)]
    ]
    assert upward == []


def test_the_checker_sees_function_level_imports_and_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(g) == [["a", "b", "c"]]
    source = PACKAGE / "cli" / "train_cli.py"
    assert "lorafit.train.pipeline" in imported(
        "lorafit.cli.train_cli", source, set(all_modules())
    )  # imported inside a command
