"""One vocabulary module (issue 12): task, split and regime names and the book sides are defined
once, in cmm.vocabulary (the event flags, which need hftbacktest, in cmm.data.events), and
nowhere else under src/cmm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

from cmm import vocabulary as V

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cmm"
OWNERS = {
    "TASKS": "vocabulary.py", "SPLITS": "vocabulary.py", "EVALUATED_SPLITS": "vocabulary.py",
    "REGIMES": "vocabulary.py", "BID": "vocabulary.py", "ASK": "vocabulary.py",
    "SIDE_FLAG": "data/events.py", "EXCH_LOCAL_FLAGS": "data/events.py",
}


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _module_level(body):
    """Statements run at import: the module's own, and those inside its if/try/with blocks."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and not isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield from _module_level(inner)


def _assigned_names(node) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else \
        [node.target] if isinstance(node, ast.AnnAssign) else []
    out = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                out.append(n.id)
    return out


def _strings(node) -> tuple[str, ...] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return tuple(e.value for e in node.elts)
    if isinstance(node, ast.Dict) and node.keys and all(
            isinstance(k, ast.Constant) and type(k.value) is int for k in node.keys) and all(
            isinstance(v, ast.Constant) and isinstance(v.value, str) for v in node.values):
        by_key = {k.value: v.value for k, v in zip(node.keys, node.values, strict=True)}
        if sorted(by_key) == list(range(len(by_key))):
            return tuple(by_key[i] for i in range(len(by_key)))
    return None


def test_the_names_and_their_order_are_as_the_artefacts_store_them():
    assert V.TASKS == ("mid", "spread", "volume")  # model heads, target and prediction columns
    assert V.SPLITS == ("train", "validation", "test")  # split ids 0, 1, 2
    assert V.EVALUATED_SPLITS == ("validation", "test")
    assert V.REGIMES == ("low", "mid", "high")  # regime labels 0, 1, 2
    assert (V.BID, V.ASK) == (0, 1)


def test_the_side_and_view_flags_are_hftbacktest_s():
    from hftbacktest.types import BUY_EVENT, EXCH_EVENT, LOCAL_EVENT, SELL_EVENT

    from cmm.data.events import EXCH_LOCAL_FLAGS, SIDE_FLAG

    assert SIDE_FLAG[V.BID] == BUY_EVENT and SIDE_FLAG[V.ASK] == SELL_EVENT
    assert EXCH_LOCAL_FLAGS == EXCH_EVENT | LOCAL_EVENT and EXCH_LOCAL_FLAGS.dtype == "uint64"


def test_the_config_task_literal_is_the_vocabulary():
    from cmm.config import ExpertGridConfig, TaskName

    assert get_args(TaskName) == V.TASKS
    assert ExpertGridConfig().tasks == V.TASKS


def test_the_vocabulary_imports_nothing_heavy():
    tree = ast.parse((PACKAGE / "vocabulary.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)
    code = "import sys, cmm.config; assert 'numpy' not in sys.modules, 'config pulls in numpy'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_other_module_defines_a_vocabulary_name():
    found = []
    for rel, tree in _sources():
        for node in _module_level(tree.body):
            for name in _assigned_names(node):
                if name in OWNERS and OWNERS[name] != rel:
                    found.append(f"{rel}:{node.lineno} assigns {name}")
            # the event flags spelled anew (FLAGS = np.uint64(EXCH_EVENT | LOCAL_EVENT))
            if rel != "data/events.py" and isinstance(node, (ast.Assign, ast.AnnAssign)) \
                    and node.value is not None:
                used = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                if {"EXCH_EVENT", "LOCAL_EVENT"} <= used:
                    found.append(f"{rel}:{node.lineno} defines EXCH_EVENT | LOCAL_EVENT again")
    assert not found, "use cmm.vocabulary / cmm.data.events:\n" + "\n".join(found)


def test_no_module_spells_a_vocabulary_tuple_inline():
    vocab = {V.TASKS: "TASKS", V.SPLITS: "SPLITS", V.EVALUATED_SPLITS: "EVALUATED_SPLITS",
             V.REGIMES: "REGIMES"}
    found = []
    for rel, tree in _sources():
        if rel == "vocabulary.py":
            continue
        # Literal[...] (a type: config.TaskName, checked above) is the one spelling allowed
        typed = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        for node in ast.walk(tree):
            value = _strings(node)
            if value in vocab and id(node) not in typed:
                found.append(f"{rel}:{node.lineno} spells {vocab[value]}")
    assert not found, "import it from cmm.vocabulary:\n" + "\n".join(found)


def test_the_checks_see_a_hand_made_offender():
    tree = ast.parse('TASKS = ("mid", "spread", "volume")\nx = {0: "low", 1: "mid", 2: "high"}\n')
    assert [_assigned_names(n) for n in _module_level(tree.body)] == [["TASKS"], ["x"]]
    assert [_strings(n.value) for n in tree.body] == [V.TASKS, V.REGIMES]
