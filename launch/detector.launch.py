"""The detector, optionally fed by the cloud player and watched in RViz.

    ros2 launch lidar_ptq_ros detector.launch.py points_topic:=/lidar/points   # the bundled INT8 bundle (default)
    ros2 launch lidar_ptq_ros detector.launch.py model:=/path/int8.lptq        # your exported bundle, fastest backend
    ros2 launch lidar_ptq_ros detector.launch.py model:=sim_pillar backend:=torch   # FP32, an explicit choice
    ros2 launch lidar_ptq_ros detector.launch.py use_player:=true use_rviz:=true          # simulated sweeps
    ros2 launch lidar_ptq_ros detector.launch.py use_player:=true player_source:=calib_bag player_rate:=5.0

`ros2 launch lidar_ptq_ros detector.launch.py --show-args` lists the arguments. Every process gets the package's Fast
DDS profile (shared memory for large clouds, UDP on loopback only) and localhost-only discovery unless the
environment or the fastdds_profile / discovery_range arguments say otherwise. The driver publishing
points_topic needs the same profile for clouds over about 1 MB.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "lidar_ptq_ros"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    points_topic = LaunchConfiguration("points_topic")
    arguments = [
        DeclareLaunchArgument("points_topic", default_value="/points",
                              description="PointCloud2 topic the detector subscribes (and the player publishes)"),
        DeclareLaunchArgument("model", default_value="sim_pillar_int8.lptq",
                              description="a .lptq bundle (lidar-ptq export; default: the bundled INT8 model), or a "
                                          "checkpoint: a bundled name (sim_pillar = FP32, sim_voxel) or a "
                                          ".safetensors path, FP32 or INT8 (lidar-ptq quantize)"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="auto (a bundle: tensorrt where it exists, else the CPU engine its "
                                          "export chose; a checkpoint: torch), torch, onnxruntime, openvino or "
                                          "tensorrt"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "detector.yaml"]),
                              description="detector parameters (ros__parameters YAML); `model` and `backend` "
                                          "override its own"),
        DeclareLaunchArgument("use_player", default_value="false",
                              description="also start cloud_player publishing on points_topic"),
        DeclareLaunchArgument("player_source", default_value="sim",
                              description="player source: sim, a rosbag2 bag, a folder of .bin/.pcd files or a file"),
        DeclareLaunchArgument("player_rate", default_value="10.0", description="player clouds per second"),
        DeclareLaunchArgument("player_params_file",
                              default_value=PathJoinSubstitution([share, "config", "player.yaml"]),
                              description="player parameters; player_source and player_rate override theirs"),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="start RViz with config/lidar_ptq.rviz (needs the rviz2 package)"),
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
    detector = Node(
        package=PACKAGE, executable="detector_node", name="lidar_ptq_detector", output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                     "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str)}],
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
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="log",
        condition=IfCondition(LaunchConfiguration("use_rviz")),
        arguments=["-d", PathJoinSubstitution([share, "config", "lidar_ptq.rviz"])],
    )
    return LaunchDescription(arguments + environment + [detector, player, rviz])
