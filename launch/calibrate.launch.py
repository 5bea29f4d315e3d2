"""Record a calibration bag from a live topic, quantize the model with it, export the INT8 bundle, and check the
bundle against the FP32 model on recorded frames calibration did not use: one command.

    ros2 launch lidar_ptq_ros calibrate.launch.py points_topic:=/lidar/points bag:=calib_bag \
        model:=/path/fp32.safetensors int8:=int8.safetensors bundle:=int8.lptq
    ros2 launch lidar_ptq_ros calibrate.launch.py use_player:=true frames:=32 method:=lidar-ptq-quick   # no robot

1. calibration_recorder writes `frames` + `compare_frames` clouds of points_topic into the new bag `bag`
   (config/calibrate.yaml: one cloud every 0.5 s), then exits;
2. when it exits with status 0: lidar-ptq quantize --calib <bag> --checkpoint <model> --frames <frames>
   --method <method> --out <int8> (it calibrates on `frames` messages spread evenly over the bag);
3. when that succeeds: lidar-ptq export --checkpoint <int8> --out <bundle>;
4. when that succeeds: lidar-ptq compare <bag> --reference <model> --candidate <bundle> --exclude-calibration
   <frames> --frames <compare_frames> --threshold <threshold> --out <compare_out>: the FP32 model against the bundle
   on the `compare_frames` messages calibration did not take (interleaved with the calibration ones: the same drive,
   never a calibration frame); the launch ends with its verdict (PASS: exit 0; FAIL: the bundle is written but did
   not hold, see <compare_out>/compare.json and worst_frames.png). compare_frames:=0 skips the comparison.
A step that fails ends the launch with its exit status in the log. Paths are relative to the working directory.
Every process gets the package's Fast DDS profile and localhost-only discovery unless the environment or the
fastdds_profile / discovery_range arguments say otherwise (see detector.launch.py).
"""

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    LogInfo,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown, matches_action
from launch.events.process import ShutdownProcess
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import ExecutableInPackage, FindPackageShare

PACKAGE = "lidar_ptq_ros"


def _next_step_if_ok(step: str, actions: list, always: tuple = ()):
    """An OnProcessExit callback: `always`, then `actions` when the step exited with 0, else log why and end the
    launch."""

    def on_exit(event, context):
        if event.returncode == 0:
            return [*always, *actions]
        return [*always, LogInfo(msg=f"{step} exited with status {event.returncode}; stopping"),
                EmitEvent(event=Shutdown(reason=f"{step} failed"))]

    return on_exit


def _verdict(compare_out):
    """The OnProcessExit callback of lidar-ptq compare: its verdict in the log, then the end of the launch."""

    def on_exit(event, context):
        if event.returncode == 0:
            message = ["PASS: the INT8 bundle holds on the held-out frames (", compare_out, "/compare.json)"]
        elif event.returncode == 1:
            message = ["FAIL: the INT8 bundle is written but does not reproduce enough of the FP32 boxes on the "
                       "held-out frames; see ", compare_out, "/compare.json and worst_frames.png"]
        else:
            message = [f"lidar-ptq compare exited with status {event.returncode} (bad input); no verdict"]
        return [LogInfo(msg=message), EmitEvent(event=Shutdown(reason="calibration done"))]

    return on_exit


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    bag = LaunchConfiguration("bag")
    model = LaunchConfiguration("model")
    frames = LaunchConfiguration("frames")
    int8 = LaunchConfiguration("int8")
    bundle = LaunchConfiguration("bundle")
    points_topic = LaunchConfiguration("points_topic")
    compare_frames = LaunchConfiguration("compare_frames")
    compare_out = LaunchConfiguration("compare_out")
    lidar_ptq = ExecutableInPackage(executable="lidar-ptq", package=PACKAGE)
    arguments = [
        DeclareLaunchArgument("points_topic", default_value="/points", description="PointCloud2 topic to record"),
        DeclareLaunchArgument("bag", default_value="calib_bag",
                              description="the new calibration bag (directory; an existing path is refused)"),
        DeclareLaunchArgument("frames", default_value="256", description="clouds to record and calibrate with"),
        DeclareLaunchArgument("model", default_value="sim_pillar",
                              description="FP32 checkpoint to quantize: a bundled name or a .safetensors path"),
        DeclareLaunchArgument("method", default_value="lidar-ptq",
                              description="quantization method (lidar-ptq quantize --method; lidar-ptq-fast takes "
                                          "seconds, lidar-ptq-quick about two minutes)"),
        DeclareLaunchArgument("compare_frames", default_value="32",
                              description="clouds recorded beyond `frames` and held out of calibration: lidar-ptq "
                                          "compare runs FP32 vs the bundle on them (0: no comparison)"),
        DeclareLaunchArgument("threshold", default_value="0.95",
                              description="compare passes when the bundle reproduces this share of the FP32 boxes"),
        DeclareLaunchArgument("compare_out", default_value="int8_compare",
                              description="folder for compare.json and worst_frames.png"),
        DeclareLaunchArgument("int8", default_value="int8.safetensors", description="INT8 checkpoint to write"),
        DeclareLaunchArgument("bundle", default_value="int8.lptq", description="deployable .lptq bundle to write"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "calibrate.yaml"]),
                              description="recorder parameters (ros__parameters YAML); bag and frames override "
                                          "its output and frames"),
        DeclareLaunchArgument("use_player", default_value="false",
                              description="also start cloud_player publishing on points_topic (no robot needed)"),
        DeclareLaunchArgument("player_source", default_value="sim",
                              description="player source: sim, a rosbag2 bag, a folder of .bin/.pcd files or a file"),
        DeclareLaunchArgument("player_rate", default_value="10.0", description="player clouds per second"),
        DeclareLaunchArgument("player_params_file",
                              default_value=PathJoinSubstitution([share, "config", "player.yaml"]),
                              description="player parameters; player_source and player_rate override theirs"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=EnvironmentVariable(
                                  "FASTDDS_DEFAULT_PROFILES_FILE",
                                  default_value=PathJoinSubstitution([share, "config", "dds",
                                                                      "fastdds_loopback_shm.xml"])),
                              description="Fast DDS XML profile for every process (default: the environment's, "
                                          "else the package's shared-memory + loopback profile)"),
        DeclareLaunchArgument("discovery_range",
                              default_value=EnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                                default_value="LOCALHOST"),
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE for every process (default: the "
                                          "environment's, else LOCALHOST)"),
    ]
    environment = [
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", LaunchConfiguration("discovery_range")),
    ]
    recorder = Node(
        package=PACKAGE, executable="calibration_recorder", name="lidar_ptq_calibration_recorder", output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"output": ParameterValue(bag, value_type=str),
                     # calibration's frames and the held-out ones, interleaved by quantize's even spread
                     "frames": ParameterValue(PythonExpression([frames, " + ", compare_frames]), value_type=int)}],
        remappings=[("points", points_topic)],
    )
    player = Node(
        package=PACKAGE, executable="cloud_player", name="lidar_ptq_cloud_player", output="screen",
        condition=IfCondition(LaunchConfiguration("use_player")),
        parameters=[LaunchConfiguration("player_params_file"),
                    {"source": ParameterValue(LaunchConfiguration("player_source"), value_type=str),
                     "rate": ParameterValue(LaunchConfiguration("player_rate"), value_type=float)}],
        remappings=[("points", points_topic)],
    )
    quantize = ExecuteProcess(
        name="lidar_ptq_quantize", output="screen",
        cmd=[lidar_ptq, "quantize", "--calib", bag, "--checkpoint", model, "--frames", frames,
             "--method", LaunchConfiguration("method"), "--out", int8],
    )
    export = ExecuteProcess(
        name="lidar_ptq_export", output="screen",
        cmd=[lidar_ptq, "export", "--checkpoint", int8, "--out", bundle],
    )
    compare = ExecuteProcess(
        name="lidar_ptq_compare", output="screen",
        cmd=[lidar_ptq, "compare", bag, "--reference", model, "--candidate", bundle, "--exclude-calibration", frames,
             "--frames", compare_frames, "--threshold", LaunchConfiguration("threshold"), "--out", compare_out],
        condition=IfCondition(PythonExpression([compare_frames, " > 0"])),
    )
    written = LogInfo(msg=["INT8 bundle written: ", bundle])
    done = [written, EmitEvent(event=Shutdown(reason="calibration done"),
                               condition=IfCondition(PythonExpression([compare_frames, " <= 0"]))), compare]
    steps = [
        # The recorder is done (or was stopped): the player has nothing more to feed; quantize what was recorded.
        RegisterEventHandler(OnProcessExit(target_action=recorder, on_exit=_next_step_if_ok(
            "calibration_recorder", [quantize],
            always=(EmitEvent(event=ShutdownProcess(process_matcher=matches_action(player))),)))),
        RegisterEventHandler(OnProcessExit(target_action=quantize,
                                           on_exit=_next_step_if_ok("lidar-ptq quantize", [export]))),
        RegisterEventHandler(OnProcessExit(target_action=export, on_exit=_next_step_if_ok("lidar-ptq export", done))),
        RegisterEventHandler(OnProcessExit(target_action=compare, on_exit=_verdict(compare_out))),
    ]
    return LaunchDescription(arguments + environment + [player, recorder] + steps)
