"""Plugins and discovery: user code registers components before the config is checked, rltool's own
modules are found without import lists, and the package's import graph has no cycles."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rltool.config import ConfigError
from rltool.plugins import load_plugins
from rltool.registry import Registry, discover
from rltool.rewards import REWARDS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rltool"


@pytest.fixture(autouse=True)
def fresh_plugin_state(monkeypatch):
    """What a test's plugins imported is forgotten after it (its files live in its tmp_path)."""
    import rltool.plugins

    monkeypatch.setattr(rltool.plugins, "_LOADED", set())
    monkeypatch.setattr(rltool.plugins, "_SPECS", [])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """rltool modules `path` imports when it is imported: module-level statements only (an import inside
    a function runs later), `if TYPE_CHECKING:` blocks left out."""
    me, found = module_name(path), set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []) + [h for x in getattr(node, "handlers", []) for h in x.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("rltool"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    pkg = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                if base.startswith("rltool"):
                    for a in node.names:
                        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != me}


def import_cycles() -> list[list[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "conf" not in p.parts]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): top_level_imports(p, modules) for p in files}
    cycles, state = [], {}

    def walk(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                walk(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    return cycles


def test_no_import_cycles_in_components():
    """algos, envs and rewards register by being discovered, not by a module importing the others
    (rollouts.py imported erl, which imports rollouts)."""
    cycles = [c for c in import_cycles() if any(m.startswith(("rltool.algos", "rltool.envs", "rltool.rewards")) for m in c)]
    assert cycles == []


def test_registries_are_complete_in_a_fresh_interpreter():
    """Whichever module is imported first, a registry lists every shipped component: the rollouts of
    erl and agrl without importing them, the envs and rewards without their package's import list."""
    code = textwrap.dedent("""
        from rltool.algos.rollouts import ROLLOUTS
        from rltool.envs import ENVS
        from rltool.rewards.registry import REWARDS
        print(ROLLOUTS.names(), 'arithmetic' in ENVS, 'math_verify' in REWARDS)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['agrl', 'erl', 'grpo'] True True"


def test_discover_imports_every_module_of_a_package(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_components"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from rltool.registry import Registry\nTOYS = Registry('toy', home='toy_components')\n")
    (pkg / "a.py").write_text("from toy_components import TOYS\nTOYS.register('a')(len)\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from toy_components import TOYS\nTOYS.register('b')(len)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_components

    assert toy_components.TOYS.names() == ["a", "b"]
    with pytest.raises(KeyError, match="unknown toy 'c'; valid: a, b"):
        toy_components.TOYS["c"]


def test_a_registry_without_home_discovers_nothing():
    r = Registry("thing")
    r.register("x")(len)
    assert r.names() == ["x"]
    discover("rltool.rewards")  # idempotent


REWARD_PLUGIN = """
from rltool.rewards import reward

@reward("{name}")
def says_yes(completion, example):
    return float("yes" in completion)
"""


def test_file_plugin_registers_once(tmp_path, monkeypatch):
    monkeypatch.setattr(REWARDS, "_entries", dict(REWARDS._entries))
    plugin = tmp_path / "my_task.py"
    plugin.write_text(REWARD_PLUGIN.format(name="plugin_says_yes"))
    load_plugins([str(plugin)])
    load_plugins([str(plugin)])  # validate then train in one process, or a sweep's jobs: not registered twice
    assert "plugin_says_yes" in REWARDS


def test_module_plugin_is_imported_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(REWARDS, "_entries", dict(REWARDS._entries))
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "rewards_mod.py").write_text(REWARD_PLUGIN.format(name="plugin_module_reward"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    load_plugins(["my_pkg.rewards_mod"])
    assert "plugin_module_reward" in REWARDS


@pytest.mark.parametrize("source,spec,message", [
    (None, "missing.py", "plugins[0]='missing.py': no such file"),
    (None, "no_such_pkg.mod", "plugins[0]='no_such_pkg.mod': no such module and no such file"),
    ("x = 1\ndef f(:\n", "bad.py", "plugins[0]='bad.py': SyntaxError at line 2"),
    ("import os\nraise RuntimeError('no data here\\nsecond line')\n", "bad.py",
     "plugins[0]='bad.py': RuntimeError at line 2 while importing: no data here"),
    ("import no_such_dependency_xyz\n", "bad.py", "plugins[0]='bad.py': ModuleNotFoundError at line 1 while importing"),
    (REWARD_PLUGIN.format(name="format"), "bad.py", "reward 'format' is registered twice"),
])
def test_a_failing_plugin_is_one_line_naming_it(tmp_path, monkeypatch, source, spec, message):
    monkeypatch.chdir(tmp_path)
    if source is not None:
        (tmp_path / spec).write_text(source)
    with pytest.raises(ConfigError) as e:
        load_plugins([spec])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_installed_package_registers_through_the_entry_point_group(tmp_path):
    """A package's `[project.entry-points."rltool.plugins"]` is imported with no `plugins=` at all."""
    (tmp_path / "ep_plugin.py").write_text(REWARD_PLUGIN.format(name="entry_point_reward"))
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rltool.plugins]\nmine = ep_plugin\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from rltool.plugins import load_plugins; from rltool.rewards import REWARDS\n"
            "load_plugins([]); print('entry_point_reward' in REWARDS)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "True", out.stderr


def test_reward_workers_score_a_plugin_reward(tmp_path, monkeypatch):
    """reward.workers=N: the spawned workers import the plugins this process imported, so a plugin's
    reward is scored there too (they used to know only the shipped rewards and reward.module's)."""
    from rltool.envs.base import Example
    from rltool.rewards.registry import Row
    from rltool.rewards.runner import RewardRunner

    monkeypatch.setattr(REWARDS, "_entries", dict(REWARDS._entries))
    plugin = tmp_path / "worker_task.py"
    plugin.write_text(REWARD_PLUGIN.format(name="plugin_worker_reward"))
    load_plugins([str(plugin)])
    runner = RewardRunner(timeout_s=30, workers=1)
    try:
        example = Example("e0", "Say yes", "yes")
        result, reasons = runner.call(REWARDS["plugin_worker_reward"], [Row("yes", example), Row("no", example)])
    finally:
        runner.close()
    assert [v for v, _ in result] == [1.0, 0.0] and reasons == [None, None]
