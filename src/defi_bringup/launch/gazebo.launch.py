"""DeFI on a robot simulated in Gazebo (Harmonic), wired through ros_gz_bridge:

    gz sim my_world.sdf      # your world and robot model, started first
    ros2 launch defi_bringup gazebo.launch.py checkpoint:=/path/to/ckpt \\
        gz_camera_topic:=/world/default/model/arm/link/camera/sensor/camera/image \\
        gz_cmd_topic:=/model/arm/cmd_vel [gz_joint_state_topic:=/world/default/model/arm/joint_state]

ros_gz_bridge's parameter_bridge carries the Gazebo camera (gz.msgs.Image -> camera/image_raw),
joint states (gz.msgs.Model -> joint_states), the clock (-> /clock) and the chunk executor's twist
(servo_node/delta_twist_cmds, TwistStamped -> gz.msgs.Twist on gz_cmd_topic); defi_bringup runs
on sim time with params_file (default config/defi_robot.yaml) and output_mode twist.
Needs ros_gz_bridge (not a dependency of this package: robots without Gazebo do not pull it).
"""
import tempfile

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

CAMERA_TOPIC = 'camera/image_raw'
TWIST_TOPIC = 'servo_node/delta_twist_cmds'


def bridge_config(camera: str, cmd: str, joints: str) -> list:
    """ros_gz_bridge config_file entries (ROS names are DeFI's, relative to the namespace)."""
    def entry(ros, gz, ros_type, gz_type, direction):
        return {'ros_topic_name': ros, 'gz_topic_name': gz, 'ros_type_name': ros_type,
                'gz_type_name': gz_type, 'direction': direction}
    out = [entry('/clock', '/clock', 'rosgraph_msgs/msg/Clock', 'gz.msgs.Clock', 'GZ_TO_ROS'),
           entry(CAMERA_TOPIC, camera, 'sensor_msgs/msg/Image', 'gz.msgs.Image', 'GZ_TO_ROS'),
           entry(TWIST_TOPIC, cmd, 'geometry_msgs/msg/TwistStamped', 'gz.msgs.Twist', 'ROS_TO_GZ')]
    if joints:
        out.append(entry('joint_states', joints, 'sensor_msgs/msg/JointState', 'gz.msgs.Model', 'GZ_TO_ROS'))
    return out


def launch_setup(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)
    config = tempfile.NamedTemporaryFile('w', prefix='defi_gz_bridge_', suffix='.yaml', delete=False)
    with config:
        yaml.safe_dump(bridge_config(arg('gz_camera_topic'), arg('gz_cmd_topic'), arg('gz_joint_state_topic')),
                       config, sort_keys=False)
    wiring = {'use_sim_time': True, 'output_mode': 'twist', 'twist_topic': TWIST_TOPIC,
              'camera_topics': [CAMERA_TOPIC]}
    if arg('checkpoint'):
        wiring['checkpoint'] = arg('checkpoint')
    return [
        Node(package='ros_gz_bridge', executable='parameter_bridge', output='screen',
             parameters=[{'config_file': config.name, 'use_sim_time': True}]),
        Node(package='defi_policy', executable='defi_bringup', output='screen',
             parameters=[arg('params_file'), wiring]),
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='checkpoint directory (default: params_file)'),
        DeclareLaunchArgument('gz_camera_topic', description='Gazebo camera image topic (gz.msgs.Image)'),
        DeclareLaunchArgument('gz_cmd_topic', description='Gazebo topic that moves the end effector (gz.msgs.Twist)'),
        DeclareLaunchArgument('gz_joint_state_topic', default_value='',
                              description="Gazebo joint state topic (gz.msgs.Model); '' = none"),
        DeclareLaunchArgument(
            'params_file', description='ROS parameter file, one section per node name',
            default_value=PathJoinSubstitution([FindPackageShare('defi_bringup'), 'config', 'defi_robot.yaml'])),
        OpaqueFunction(function=launch_setup),
    ])
