"""The launch files, the RViz config and the install rules, checked without `launch` (not installable here).

Each launch file is parsed (ast) and then run against stand-ins of the launch / launch_ros modules that only record
what they are given, restricted to names the real modules export. The recorded description is then checked: every
executable is a console script of this package (read from setup.py itself), every launch configuration is declared,
every parameter file exists, is installed, is written for the node it is given to and holds only parameters that node
declares (the nodes' PARAMETERS, themselves compared with what the nodes declare under rclpy), the lidar-ptq command
lines parse with lidar-ptq's own parser, the recorder -> quantize -> export -> compare chain only moves on after a
zero exit (compare on the recorded frames calibration did not take), the environment keeps DDS on loopback, and the
RViz config shows the topics the nodes publish.
"""

import ast
import importlib
import importlib.util
import os
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PACKAGE = "lidar_ptq_ros"
SHARE = REPO  # share/lidar_ptq_ros mirrors the repository's config/ and launch/ (checked below from setup.py)

# What the real modules export (launch / launch_ros on Humble and later), as far as these files may use it.
LAUNCH_API = {
    "launch": {"LaunchDescription", "LaunchContext", "Substitution", "Action"},
    "launch.actions": {"DeclareLaunchArgument", "SetEnvironmentVariable", "ExecuteProcess", "RegisterEventHandler",
                       "EmitEvent", "LogInfo", "GroupAction", "TimerAction", "OpaqueFunction", "Shutdown",
                       "IncludeLaunchDescription", "UnsetEnvironmentVariable", "SetLaunchConfiguration"},
    "launch.conditions": {"IfCondition", "UnlessCondition", "LaunchConfigurationEquals",
                          "LaunchConfigurationNotEquals"},
    "launch.event_handlers": {"OnProcessExit", "OnProcessStart", "OnShutdown", "OnExecutionComplete",
                              "OnProcessIO"},
    "launch.events": {"Shutdown", "matches_action", "matches_name", "TimerEvent", "ExecutionComplete"},
    "launch.events.process": {"ShutdownProcess", "SignalProcess", "ProcessExited", "ProcessStarted"},
    "launch.substitutions": {"LaunchConfiguration", "PathJoinSubstitution", "EnvironmentVariable",
                             "TextSubstitution", "PythonExpression", "FindExecutable", "Command",
                             "AndSubstitution", "NotSubstitution", "OrSubstitution", "EqualsSubstitution"},
    "launch_ros": set(),
    "launch_ros.actions": {"Node", "ComposableNodeContainer", "LifecycleNode", "PushRosNamespace",
                           "SetParameter", "SetRemap"},
    "launch_ros.parameter_descriptions": {"ParameterValue", "ParameterFile"},
    "launch_ros.substitutions": {"FindPackageShare", "FindPackagePrefix", "ExecutableInPackage"},
}


class Recorded:
    """A stand-in for any launch class or function: keeps its positional and keyword arguments."""

    kind = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        return f"{self.kind}({', '.join(map(repr, self.args))}{', ' if self.args and self.kwargs else ''}" \
               f"{', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"

    def arg(self, name, position=None, default=None):
        if name in self.kwargs:
            return self.kwargs[name]
        if position is not None and len(self.args) > position:
            return self.args[position]
        return default


def stub_modules() -> dict:
    modules = {}
    for name, exported in LAUNCH_API.items():
        module = types.ModuleType(name)
        for attr in exported:
            setattr(module, attr, type(attr, (Recorded,), {"kind": attr}))
        module.__path__ = []  # a package, so that submodules import
        modules[name] = module
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def load_launch_file(path: Path, monkeypatch) -> Recorded:
    for name, module in stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(f"launch_file_{path.name.split('.')[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert description.kind == "LaunchDescription"
    return description


def walk(value):
    """Every Recorded object reachable from value (through arguments, lists, tuples, dicts)."""
    seen, stack = set(), [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Recorded):
            if id(item) in seen:
                continue
            seen.add(id(item))
            yield item
            stack.extend(item.args)
            stack.extend(item.kwargs.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())


def of_kind(description, kind):
    return [r for r in walk(description) if r.kind == kind]


def declared_arguments(description) -> dict:
    return {r.arg("name", 0): r for r in of_kind(description, "DeclareLaunchArgument")}


def evaluate(value, description, env=None, overrides=None) -> str:
    """A substitution (or a list of them) -> text, with the declared defaults, `overrides` and environment `env`."""
    env = {} if env is None else env
    overrides = overrides or {}
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "".join(evaluate(v, description, env, overrides) for v in value)
    kind = value.kind
    if kind == "LaunchConfiguration":
        name = value.arg("variable_name", 0)
        if name in overrides:
            return overrides[name]
        declared = declared_arguments(description)
        assert name in declared, f"LaunchConfiguration({name!r}) is not a declared launch argument"
        return evaluate(declared[name].arg("default_value"), description, env, overrides)
    if kind == "PathJoinSubstitution":
        return os.path.join(*[evaluate(part, description, env, overrides) for part in value.arg("substitutions", 0)])
    if kind == "FindPackageShare":
        assert value.arg("package", 0) == PACKAGE
        return str(SHARE)
    if kind == "EnvironmentVariable":
        name = value.arg("name", 0)
        return env[name] if name in env else evaluate(value.arg("default_value", default=""), description, env,
                                                      overrides)
    if kind == "ExecutableInPackage":
        return f"<{value.arg('package', 1)}>/{value.arg('executable', 0)}"
    if kind == "ParameterValue":
        return evaluate(value.arg("value", 0), description, env, overrides)
    if kind == "PythonExpression":  # as launch does: the substituted text evaluated as Python (here: arithmetic)
        return str(eval(evaluate(value.arg("expression", 0), description, env, overrides), {"__builtins__": {}}))
    raise AssertionError(f"no evaluation for {value!r}")


def setup_kwargs() -> dict:
    """What setup.py passes to setuptools.setup (run with setup() captured, from the repository root)."""
    import setuptools

    captured = {}
    old_cwd, old_setup = os.getcwd(), setuptools.setup
    try:
        os.chdir(REPO)
        setuptools.setup = lambda **kwargs: captured.update(kwargs)
        exec(compile((REPO / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "__main__"})
    finally:
        setuptools.setup = old_setup
        os.chdir(old_cwd)
    return captured


@pytest.fixture(scope="module")
def console_scripts() -> dict:
    scripts = {}
    for line in setup_kwargs()["entry_points"]["console_scripts"]:
        name, target = (part.strip() for part in line.split("="))
        scripts[name] = target
    return scripts


def node_module(console_scripts, executable: str):
    assert executable in console_scripts, f"{executable} is not a console script of this package"
    return importlib.import_module(console_scripts[executable].split(":")[0])


def declared_parameter_names(module) -> set:
    return {spec.name for spec in module.PARAMETERS}


def exec_depends() -> set:
    return {e.text for e in ET.parse(REPO / "package.xml").getroot().iter("exec_depend")}


# -- static checks -------------------------------------------------------------------------------------------------
def test_launch_files_exist_and_parse():
    assert [p.name for p in LAUNCH_FILES] == ["calibrate.launch.py", "detector.launch.py"]
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text(), str(path))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in functions, path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module in LAUNCH_API, f"{path.name} imports from {node.module}"
                unknown = {a.name for a in node.names} - LAUNCH_API[node.module]
                assert not unknown, f"{path.name}: {node.module} has no {unknown}"
            elif isinstance(node, ast.Import):
                pytest.fail(f"{path.name}: plain import {[a.name for a in node.names]}")


def test_setup_installs_launch_files_configs_and_console_scripts(console_scripts):
    installed = {}
    for destination, files in setup_kwargs()["data_files"]:
        installed.setdefault(destination, set()).update(files)
    share = f"share/{PACKAGE}"
    assert {f"launch/{p.name}" for p in LAUNCH_FILES} <= installed[f"{share}/launch"]
    assert {"config/lidar_ptq.rviz", "config/detector.yaml", "config/calibrate.yaml",
            "config/player.yaml"} <= installed[f"{share}/config"]
    assert "config/dds/fastdds_loopback_shm.xml" in installed[f"{share}/config/dds"]
    assert "package.xml" in installed[share]
    assert {"detector_node", "calibration_recorder", "cloud_player", "lidar-ptq"} <= set(console_scripts)
    for name, target in console_scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_package_xml_names_what_the_launch_files_need():
    depends = exec_depends()
    assert {"launch", "launch_ros", "ros2launch", "rclpy", "sensor_msgs", "rviz2"} <= depends


# -- the launch descriptions ---------------------------------------------------------------------------------------
@pytest.fixture(params=[p.name for p in LAUNCH_FILES])
def description(request, monkeypatch):
    return request.param, load_launch_file(REPO / "launch" / request.param, monkeypatch)


def test_every_launch_configuration_is_declared_with_a_description(description):
    name, desc = description
    declared = declared_arguments(desc)
    for argument in declared.values():
        assert argument.arg("description"), f"{name}: argument {argument.arg('name', 0)} has no description"
    used = {r.arg("variable_name", 0) for r in of_kind(desc, "LaunchConfiguration")}
    assert used <= set(declared), f"{name}: undeclared {used - set(declared)}"
    assert {"points_topic", "model", "params_file", "use_player", "player_source", "player_rate"} <= set(declared)


def test_nodes_are_console_scripts_with_matching_parameter_files(description, console_scripts):
    name, desc = description
    nodes = of_kind(desc, "Node")
    assert nodes
    for node in nodes:
        package, executable = node.arg("package"), node.arg("executable")
        if package != PACKAGE:
            assert package in exec_depends(), f"{name}: {package} is not an exec_depend of package.xml"
            continue
        module = node_module(console_scripts, executable)
        assert node.arg("name") == module.NODE_NAME, f"{name}: {executable} renamed"
        declared = declared_parameter_names(module)
        files = [p for p in node.arg("parameters") if not isinstance(p, dict)]
        assert files, f"{name}: {executable} gets no parameter file"
        for parameter_file in files:
            path = Path(evaluate(parameter_file, desc))
            assert path.is_file(), f"{name}: {path} does not exist"
            content = yaml.safe_load(path.read_text())
            assert list(content) == [module.NODE_NAME], f"{path.name} is not written for {module.NODE_NAME}"
            keys = set(content[module.NODE_NAME]["ros__parameters"])
            assert keys <= declared, f"{path.name}: {sorted(keys - declared)} not declared by {executable}"
        for inline in (p for p in node.arg("parameters") if isinstance(p, dict)):
            assert set(inline) <= declared, f"{name}: {executable} does not declare {set(inline) - declared}"
        for source, _ in node.arg("remappings", default=[]):
            assert source == "points", f"{name}: remaps {source}, which {executable} does not use"


def test_environment_keeps_dds_on_loopback_unless_overridden(description):
    name, desc = description
    entities = desc.args[0]
    setters = [e for e in entities if e.kind == "SetEnvironmentVariable"]
    first_process = min(i for i, e in enumerate(entities) if e.kind in ("Node", "ExecuteProcess"))
    assert all(entities.index(s) < first_process for s in setters), "set before any process starts"
    values = {s.arg("name", 0): s.arg("value", 1) for s in setters}
    assert set(values) == {"FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE"}
    profile = Path(evaluate(values["FASTDDS_DEFAULT_PROFILES_FILE"], desc, env={}))
    assert profile == REPO / "config" / "dds" / "fastdds_loopback_shm.xml" and profile.is_file()
    assert evaluate(values["ROS_AUTOMATIC_DISCOVERY_RANGE"], desc, env={}) == "LOCALHOST"
    chosen = {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    assert evaluate(values["FASTDDS_DEFAULT_PROFILES_FILE"], desc, env=chosen) == "/etc/my_profile.xml"
    assert evaluate(values["ROS_AUTOMATIC_DISCOVERY_RANGE"], desc, env=chosen) == "SUBNET"


def test_player_is_optional_and_remapped_with_its_consumer(description):
    name, desc = description
    nodes = {n.arg("executable"): n for n in of_kind(desc, "Node")}
    player = nodes["cloud_player"]
    condition = player.arg("condition")
    assert condition.kind == "IfCondition" and condition.arg("predicate_expression", 0).arg("variable_name", 0) \
        == "use_player"
    assert declared_arguments(desc)["use_player"].arg("default_value") == "false"
    consumer = nodes["detector_node" if name.startswith("detector") else "calibration_recorder"]
    assert evaluate(dict(player.arg("remappings"))["points"], desc) == \
        evaluate(dict(consumer.arg("remappings"))["points"], desc) == "/points"
    inline = next(p for p in player.arg("parameters") if isinstance(p, dict))
    assert evaluate(inline["source"], desc) == "sim" and float(evaluate(inline["rate"], desc)) == 10.0
    assert inline["rate"].arg("value_type") is float


def test_detector_launch_model_and_rviz(monkeypatch):
    desc = load_launch_file(REPO / "launch" / "detector.launch.py", monkeypatch)
    nodes = {n.arg("executable"): n for n in of_kind(desc, "Node")}
    inline = next(p for p in nodes["detector_node"].arg("parameters") if isinstance(p, dict))
    assert evaluate(inline["model"], desc) == "sim_pillar_int8.lptq" and inline["model"].arg("value_type") is str
    assert evaluate(inline["backend"], desc) == "auto" and inline["backend"].arg("value_type") is str
    bundle = {"model": "q.lptq", "backend": "onnxruntime"}
    from lidar_ptq_ros.detector_node import validate_settings

    shipped = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())["lidar_ptq_detector"]["ros__parameters"]
    launched = {**shipped, **{k: evaluate(inline[k], desc, overrides=bundle) for k in inline}}
    assert validate_settings(launched).backend == "onnxruntime", "a bundle from calibrate.launch.py runs as launched"
    rviz = nodes["rviz2"]
    assert rviz.arg("condition").arg("predicate_expression", 0).arg("variable_name", 0) == "use_rviz"
    flag, config = rviz.arg("arguments")
    assert flag == "-d" and Path(evaluate(config, desc)) == REPO / "config" / "lidar_ptq.rviz"


def lidar_ptq_command(process, desc, overrides=None) -> list:
    """The command line of an ExecuteProcess running lidar-ptq, each option spelled out in full (argparse would
    accept an abbreviation, which a later option could make ambiguous)."""
    from lidar_ptq_core.cli import build_parser

    cmd = [evaluate(part, desc, overrides=overrides) for part in process.arg("cmd")]
    assert cmd[0] == f"<{PACKAGE}>/lidar-ptq", "run from the package's lib folder, where colcon installs scripts"
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    options = {s for action in subcommands[cmd[1]]._actions for s in action.option_strings}
    assert {a for a in cmd[2:] if a.startswith("--")} <= options, f"lidar-ptq {cmd[1]} has no such option"
    return cmd[1:]


def test_calibrate_launch_runs_quantize_export_then_compare_on_success_only(monkeypatch, console_scripts):
    from lidar_ptq_core.calibration_data import spread_indices
    from lidar_ptq_core.cli import build_parser
    from lidar_ptq_core.commands.compare import held_out_indices

    desc = load_launch_file(REPO / "launch" / "calibrate.launch.py", monkeypatch)
    assert {"bag", "frames", "model", "int8", "bundle", "method", "compare_frames", "threshold",
            "compare_out"} <= set(declared_arguments(desc))
    assert "lidar-ptq" in console_scripts
    processes = {p.arg("name"): p for p in of_kind(desc, "ExecuteProcess")}
    quantize, export = processes["lidar_ptq_quantize"], processes["lidar_ptq_export"]
    compare = processes["lidar_ptq_compare"]
    for tool in of_kind(desc, "ExecutableInPackage"):
        assert tool.arg("package", 1) == PACKAGE and tool.arg("executable", 0) in console_scripts

    overrides = {"bag": "runs/bag", "frames": "32", "model": "fp32.safetensors", "int8": "q.safetensors",
                 "bundle": "q.lptq", "method": "lidar-ptq-quick", "compare_frames": "8", "compare_out": "runs/cmp"}
    parser = build_parser()
    q_args = parser.parse_args(lidar_ptq_command(quantize, desc, overrides))
    e_args = parser.parse_args(lidar_ptq_command(export, desc, overrides))
    c_args = parser.parse_args(lidar_ptq_command(compare, desc, overrides))
    assert (q_args.command, q_args.calib, q_args.checkpoint, q_args.frames, q_args.method, q_args.out) == \
        ("quantize", "runs/bag", "fp32.safetensors", 32, "lidar-ptq-quick", "q.safetensors")
    assert (e_args.command, e_args.checkpoint, e_args.out) == ("export", "q.safetensors", "q.lptq")
    # compare: the FP32 model that was quantized against the bundle that was exported, on the recorded bag.
    assert (c_args.command, c_args.source, c_args.reference, c_args.candidate, c_args.out) == \
        ("compare", "runs/bag", "fp32.safetensors", "q.lptq", "runs/cmp")
    assert (c_args.exclude_calibration, c_args.frames, c_args.threshold) == (32, 8, 0.95)
    defaults = parser.parse_args(lidar_ptq_command(quantize, desc))  # the declared defaults are valid too
    assert defaults.method == "lidar-ptq" and defaults.frames == 256
    compare_defaults = parser.parse_args(lidar_ptq_command(compare, desc))
    assert (compare_defaults.exclude_calibration, compare_defaults.frames) == (256, 32)

    recorder = next(n for n in of_kind(desc, "Node") if n.arg("executable") == "calibration_recorder")
    inline = next(p for p in recorder.arg("parameters") if isinstance(p, dict))
    assert evaluate(inline["output"], desc, overrides=overrides) == "runs/bag", "quantize reads what was recorded"
    recorded = int(evaluate(inline["frames"], desc, overrides=overrides))
    assert recorded == 40 and inline["frames"].arg("value_type") is int, "calibration's 32 and compare's 8"
    assert int(evaluate(inline["frames"], desc)) == 256 + 32
    # What quantize calibrates on and what compare runs on are disjoint, and compare gets all the others.
    calibrated = set(spread_indices(recorded, q_args.frames).tolist())
    held_out = held_out_indices(recorded, c_args.frames, calibration_frames=c_args.exclude_calibration)
    assert len(calibrated) == 32 and len(held_out) == 8 and not calibrated & set(held_out)

    handlers = {h.arg("target_action"): h.arg("on_exit") for h in of_kind(desc, "OnProcessExit")}
    assert set(handlers) == {recorder, quantize, export, compare}

    class Exited:
        def __init__(self, returncode):
            self.returncode = returncode

    for step, following in ((recorder, quantize), (quantize, export), (export, compare)):
        ok, failed = handlers[step](Exited(0), None), handlers[step](Exited(3), None)
        assert following in ok and following not in failed
        assert any(a.kind == "EmitEvent" and a.arg("event").kind == "Shutdown" for a in failed)
        assert any(a.kind == "LogInfo" and "status 3" in a.arg("msg") for a in failed)
    stop_player = [a for a in handlers[recorder](Exited(0), None) if a.kind == "EmitEvent"]
    assert stop_player and stop_player[0].arg("event").kind == "ShutdownProcess"

    def runs(action, **chosen) -> bool:
        condition = action.arg("condition")
        return condition is None or evaluate(condition.arg("predicate_expression", 0), desc,
                                             overrides={**overrides, **chosen}) == "True"

    after_export = handlers[export](Exited(0), None)
    shutdown = next(a for a in after_export if a.kind == "EmitEvent" and a.arg("event").kind == "Shutdown")
    assert runs(compare) and not runs(shutdown), "compare runs, and the launch ends with its verdict"
    assert not runs(compare, compare_frames="0") and runs(shutdown, compare_frames="0"), "compare_frames:=0 skips it"
    for status, word in ((0, "PASS"), (1, "FAIL"), (2, "status 2")):
        verdict = handlers[compare](Exited(status), None)
        log = next(a for a in verdict if a.kind == "LogInfo")
        assert word in evaluate(log.arg("msg"), desc, overrides=overrides)
        assert any(a.kind == "EmitEvent" and a.arg("event").kind == "Shutdown" for a in verdict)
    assert "runs/cmp/compare.json" in evaluate(next(a for a in handlers[compare](Exited(1), None)
                                                    if a.kind == "LogInfo").arg("msg"), desc, overrides=overrides)


# -- the nodes' declared parameters and published topics, under rclpy ----------------------------------------------
@pytest.fixture(scope="module")
def ros_nodes(tmp_path_factory):
    """The three nodes as rclpy builds them (the detector with a stand-in model), in a loopback-only context."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")
    from rclpy.parameter import Parameter

    from lidar_ptq_ros.calibration_recorder import CalibrationRecorder
    from lidar_ptq_ros.cloud_player import CloudPlayer
    from lidar_ptq_ros.detector_node import DetectorNode

    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    folder = tmp_path_factory.mktemp("player_frames")
    (folder / "000000.bin").write_bytes(bytes(16))

    class StandInDetector:
        class_names = ("Car",)

    context = rclpy.Context()
    rclpy.init(context=context)
    ns = ["--ros-args", "-r", f"__ns:=/launch_test_{os.getpid()}"]
    nodes = {}
    try:
        nodes["detector_node"] = DetectorNode(detector=StandInDetector(), context=context, cli_args=ns)
        nodes["calibration_recorder"] = CalibrationRecorder(
            context=context, cli_args=ns,
            parameter_overrides=[Parameter("output", value=str(tmp_path_factory.mktemp("rec") / "bag"))])
        nodes["cloud_player"] = CloudPlayer(context=context, cli_args=ns,
                                            parameter_overrides=[Parameter("source", value=str(folder))])
        yield nodes
    finally:
        for node in nodes.values():
            node.destroy_node()
        rclpy.shutdown(context=context)


FRAMEWORK = {"use_sim_time", "start_type_description_service"}


@pytest.mark.parametrize("executable", ["detector_node", "calibration_recorder", "cloud_player"])
def test_declared_parameter_constants_match_the_nodes(ros_nodes, console_scripts, executable):
    node = ros_nodes[executable]
    declared = {name for name in node._parameters if name not in FRAMEWORK and not name.startswith("qos_overrides.")}
    assert declared == declared_parameter_names(node_module(console_scripts, executable))
    for name in declared:
        assert node.describe_parameter(name).description, f"{executable}: {name} has no description"


def test_rviz_config_shows_what_the_nodes_publish(ros_nodes):
    config = yaml.safe_load((REPO / "config" / "lidar_ptq.rviz").read_text())
    manager = config["Visualization Manager"]
    displays = {d["Class"]: d for d in manager["Displays"]}
    ns = ros_nodes["detector_node"].get_namespace()

    def published(executable):  # topic names relative to the namespace, as they are at the root in a launch
        return {p.topic_name.replace(ns, "", 1) for p in ros_nodes[executable].publishers}

    points = displays["rviz_default_plugins/PointCloud2"]["Topic"]["Value"]
    markers = displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"]
    assert points == "/points" and points in published("cloud_player")
    assert markers == "/detection_markers" and markers in published("detector_node")
    assert "/points" == ros_nodes["detector_node"]._subscription.topic_name.replace(ns, "", 1)
    assert manager["Global Options"]["Fixed Frame"] == "lidar"
    assert ros_nodes["cloud_player"].settings.frame_id == "lidar"
    player_yaml = yaml.safe_load((REPO / "config" / "player.yaml").read_text())
    assert player_yaml["lidar_ptq_cloud_player"]["ros__parameters"]["frame_id"] == "lidar"
    from lidar_ptq_ros.markers import BOX_NAMESPACE, LABEL_NAMESPACE

    assert set(displays["rviz_default_plugins/MarkerArray"]["Namespaces"]) == {BOX_NAMESPACE, LABEL_NAMESPACE}
    # The point display reads best effort: it takes clouds from best-effort drivers and reliable players alike.
    assert displays["rviz_default_plugins/PointCloud2"]["Topic"]["Reliability Policy"] == "Best Effort"
    assert displays["rviz_default_plugins/PointCloud2"]["Channel Name"] == "intensity"


# -- colcon (a project requirement: colcon-core + colcon-ros from PyPI) ---------------------------------------------
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "resource", "lidar_ptq_core", "lidar_ptq_ros", "launch",
                 "config", "checkpoints")


def colcon_executable() -> str:
    """colcon beside this interpreter (the project venv, where ./dev installs it), else on the PATH."""
    import shutil

    pytest.importorskip("colcon_core", reason="colcon is installed by ./dev (requirements.txt)")
    beside = Path(sys.executable).with_name("colcon")
    found = str(beside) if beside.is_file() else shutil.which("colcon")
    assert found, "colcon_core is importable but its `colcon` script is neither beside python nor on the PATH"
    return found


def test_colcon_build_installs_scripts_launch_files_and_configs(tmp_path):
    """What `ros2 run` / `ros2 launch` find after `colcon build` in a workspace whose src/ holds this package: the
    console scripts in lib/lidar_ptq_ros, launch files, parameter files, library configs, the Fast DDS profile and
    package.xml under share/lidar_ptq_ros, the ament index marker, and a setup script that puts the installed
    package first on the Python path."""
    import shutil
    import subprocess

    colcon = colcon_executable()
    workspace = tmp_path / "ws"
    source = workspace / "src" / PACKAGE
    for name in PACKAGE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # COLCON_HOME in the workspace: no user defaults or mixins of this machine change the build.
    env = dict(os.environ, COLCON_HOME=str(tmp_path / "colcon_home"))
    result = subprocess.run([colcon, "--log-base", "log", "build", "--base-paths", "src"], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Finished <<< {PACKAGE}" in result.stdout, result.stdout

    install = workspace / "install" / PACKAGE
    scripts = install / "lib" / PACKAGE
    assert {"detector_node", "calibration_recorder", "cloud_player", "lidar-ptq"} <= {p.name for p in scripts.iterdir()}
    assert all(os.access(p, os.X_OK) for p in scripts.iterdir())
    share = install / "share" / PACKAGE
    assert {p.name for p in (share / "launch").iterdir()} >= {p.name for p in LAUNCH_FILES}
    configs = {p.name for p in (share / "config").iterdir() if p.is_file()}
    assert configs == {p.name for p in (REPO / "config").iterdir() if p.is_file()}
    assert {"detector.yaml", "calibrate.yaml", "player.yaml", "lidar_ptq.rviz"} <= configs
    for folder in sorted(p for p in (REPO / "config").iterdir() if p.is_dir()):  # dds/, models/, sim/, train/
        installed = sorted(p.name for p in (share / "config" / folder.name).iterdir())
        assert installed == sorted(p.name for p in folder.iterdir() if p.is_file()), folder.name
    dds = share / "config" / "dds" / "fastdds_loopback_shm.xml"
    assert dds.read_text() == (REPO / "config" / "dds" / dds.name).read_text()
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert {p.name for p in (share / "checkpoints").iterdir()} >= {p.name for p in (REPO / "checkpoints").iterdir()}
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file(), \
        "FindPackageShare finds the package through the ament index"
    assert (workspace / "install" / "setup.sh").is_file(), "what a user sources after colcon build"

    # After `. install/setup.sh`: the installed copy comes first on the Python path, the package's share folder is
    # found through the ament index (as FindPackageShare and `ros2 launch` look it up), and the installed script runs.
    site = next(install.glob("lib/python3*/site-packages"))
    probe = ("import lidar_ptq_core.cli as m; "
             "from ament_index_python.packages import get_package_share_directory as g; "
             f"print(m.__file__); print(g('{PACKAGE}'))")
    sourced = subprocess.run(["sh", "-c", '. ./install/setup.sh && "$0" -c "$1" && "$2" --help',
                              sys.executable, probe, str(scripts / "lidar-ptq")],
                             cwd=workspace, capture_output=True, text=True, timeout=120)
    assert sourced.returncode == 0, sourced.stdout + sourced.stderr
    module_file, share_dir, *help_lines = sourced.stdout.splitlines()
    assert Path(module_file).is_relative_to(site) and Path(share_dir) == share
    assert all(name in "\n".join(help_lines) for name in ("quantize", "export", "demo"))
