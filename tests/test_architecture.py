"""Structure rules of the package: no import circle (top-level or inside functions), and the
policy registry complete without the CLI (issue 12)."""

from __future__ import annotations

import subprocess
import sys

from cmm.codeversion import import_graph  # the one reader of the package's imports


def _find_cycle(graph: dict[str, set[str]] | dict[str, frozenset[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_sees_a_hand_made_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert graph["cmm.pipeline.run"], "the graph reads no imports: the walker is broken"
    assert _find_cycle(graph) is None


def test_the_pipeline_does_not_import_the_cli():
    graph = import_graph()
    for name, deps in graph.items():
        if not name.startswith("cmm.cli") and name != "cmm.__main__":
            assert not any(d.startswith("cmm.cli") for d in deps), name


def test_every_policy_is_known_without_importing_the_cli():
    code = ("import sys; from cmm.strategy.policy import available_policies; "
            "assert not any(m.startswith('cmm.cli') for m in sys.modules); "
            "print(' '.join(available_policies()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert set(out) == {"as", "cmm", "dqn", "fixed", "lgbm", "oracle", "ppo", "ridge", "rl",
                        "teacher"}


def test_the_policy_table_says_where_each_policy_lives_its_label_and_seeding():
    import importlib

    from cmm.config import RunConfig
    from cmm.pipeline.policies import policy_specs
    from cmm.strategy.policy import _REGISTRY, POLICIES

    for name, entry in POLICIES.items():  # importing its module registers it under its name
        importlib.import_module(entry["module"])
        assert name in _REGISTRY, name
    specs, _, _ = policy_specs(RunConfig(name="t", datasets=["x"]), sorted(POLICIES))
    by_slug = {s.slug: s for s in specs}
    # the rule-based policies and the yardsticks do not use the run's seed: once per dataset
    assert {s.slug for s in specs if s.source == "registry" and not s.seeded} == \
        {"fixed", "as", "oracle", "ridge", "lgbm"}
    assert by_slug["as"].label == "Avellaneda-Stoikov"
    assert by_slug["oracle"].label == "perfect-forecast ladder"
    assert by_slug["cmm"].label == "CMM (Hájek-MoE)" and by_slug["kd"].label == \
        "vanilla KD student"
