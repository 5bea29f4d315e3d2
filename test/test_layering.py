"""The layers stay apart: the core library (lidar_ptq_core) never imports the ROS layer (lidar_ptq_ros), not even by
a module name handed to importlib; `lidar-ptq demo` finds the node chain through an entry point instead."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "lidar_ptq_core"
ROS_PACKAGE = "lidar_ptq_ros"
IMPORT_CALLS = ("import_module", "__import__", "find_spec")  # importlib's and the builtin's ways to import by name
# A module path in a string (for importlib, or an entry point's "module:attr"); prose that mentions one is not.
MODULE_PATH = re.compile(ROS_PACKAGE + r"[.:][A-Za-z_][A-Za-z0-9_.:]*")


def _names_ros_package(name: str) -> bool:
    return name == ROS_PACKAGE or name.startswith((ROS_PACKAGE + ".", ROS_PACKAGE + ":"))


def ros_references(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, name), sorted, for each import of the ROS package: import statements, import_module / __import__ /
    find_spec calls with a constant name, and strings that are one of its module paths (dotted, or an entry point's
    "module:attr"). The bare package name elsewhere is the ament share folder's name (config_files.py), no import."""
    found = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name) for alias in node.names if _names_ros_package(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _names_ros_package(node.module or ""):
                found.add((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (called in IMPORT_CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and _names_ros_package(first.value.strip())):
                found.add((node.lineno, first.value.strip()))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_PATH.fullmatch(node.value.strip()):
                found.add((node.lineno, node.value.strip()))
    return sorted(found)


SAMPLE = '''\
import lidar_ptq_ros.demo_chain
from lidar_ptq_ros import detector_node
import importlib
chain = importlib.import_module("lidar_ptq_ros.demo_chain")
package = __import__("lidar_ptq_ros")
def f():
    from lidar_ptq_ros.node_main import run_node_main
RUNNER = "lidar_ptq_ros.demo_chain:run_demo"
other = "lidar_ptq_rosbag.thing"  # another package
from . import lidar_ptq_ros_like
"""A docstring: lidar_ptq_ros.demo_chain runs the nodes (prose, not an import)."""
share = Path("share") / "lidar_ptq_ros" / "config"  # the ament share folder
'''


def test_the_scan_finds_every_way_of_importing_the_ros_package():
    assert ros_references(SAMPLE) == [
        (1, "lidar_ptq_ros.demo_chain"), (2, "lidar_ptq_ros"), (4, "lidar_ptq_ros.demo_chain"), (5, "lidar_ptq_ros"),
        (7, "lidar_ptq_ros.node_main"), (8, "lidar_ptq_ros.demo_chain:run_demo"),
    ]


def test_no_core_module_imports_the_ros_layer():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 20, f"expected the core's modules under {CORE}"
    offenders = [f"{path.relative_to(REPO)}:{line}: {name}" for path in modules
                 for line, name in ros_references(path.read_text(), str(path))]
    assert not offenders, "lidar_ptq_core must not import lidar_ptq_ros:\n" + "\n".join(offenders)


def test_the_ros_package_registers_the_demo_node_chain():
    """`lidar-ptq demo` finds the node chain through the installed entry point, which names the ROS runner."""
    from lidar_ptq_core.commands import demo

    entry_point = demo.node_chain_entry_point()
    assert entry_point is not None, "reinstall the package (./dev setup) so that its entry points are registered"
    assert entry_point.value == "lidar_ptq_ros.demo_chain:run_demo"
