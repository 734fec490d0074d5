"""Nothing read from a work root, a dataset or a checkpoint can run code.

Every ``torch.load`` in the tree (code and tests) passes ``weights_only=True``; the one
documented opt-in is ``models/backbones/formats.py``'s ``allow_pickle`` (a caller must
say so for a foreign checkpoint it trusts). ``pickle.load`` appears only behind the
``trust_pickle`` opt-in of the dataset readers.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "flows", "models", "stages", "tests")
# (file, the weights_only expression allowed there): an explicit, documented opt-in.
OPT_IN = {("models/backbones/formats.py", "not allow_pickle")}
PICKLE_OPT_IN = {"stages/data/tubes.py", "stages/data/ava.py"}


def _python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _is_call_of(node: ast.Call, module: str, name: str) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == name
        and isinstance(func.value, ast.Name)
        and func.value.id == module
    )


def test_every_torch_load_is_weights_only() -> None:
    offenders, seen = [], 0
    for path in _python_files():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("torch")
                and any(a.name == "load" for a in node.names)
            ):
                offenders.append(f"{rel}:{node.lineno}: imports torch's load by name")
            if not (isinstance(node, ast.Call) and _is_call_of(node, "torch", "load")):
                continue
            seen += 1
            kw = {k.arg: k.value for k in node.keywords}
            value = kw.get("weights_only")
            if isinstance(value, ast.Constant) and value.value is True:
                continue
            expr = ast.unparse(value) if value is not None else "missing"
            if (rel, expr) in OPT_IN:
                continue
            offenders.append(f"{rel}:{node.lineno}: torch.load with weights_only={expr}")
    assert seen > 10  # the walk found the tree's loads (not a test that cannot fail)
    assert not offenders, "\n".join(offenders)


def test_pickle_load_only_behind_the_trust_opt_in() -> None:
    offenders = []
    for path in _python_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in PICKLE_OPT_IN or rel.startswith("tests/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Call) and any(
                _is_call_of(node, "pickle", n) for n in ("load", "loads", "Unpickler")
            ):
                offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node.func)}")
    assert not offenders, "\n".join(offenders)
