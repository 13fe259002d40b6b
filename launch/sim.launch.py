"""DeFI closed loop in the MuJoCo simulation: `ros2 launch launch/sim.launch.py checkpoint:=...`.

Starts defi_sim_node (Meta-World task, camera/<name>/image_raw, reads defi/action_command) and the
one-process DeFI bringup in passthrough mode; RViz optionally.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'config')


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', description='checkpoint directory'),
        DeclareLaunchArgument('task', default_value='drawer-open-v3'),
        DeclareLaunchArgument('rviz', default_value='false'),
        Node(package='defi_sim', executable='defi_sim_node', output='screen',
             parameters=[os.path.join(CONFIG, 'sim.yaml'), {'task': LaunchConfiguration('task')}]),
        Node(package='defi_policy', executable='defi_bringup', output='screen',
             parameters=[os.path.join(CONFIG, 'defi_sim.yaml'),
                         {'checkpoint': LaunchConfiguration('checkpoint')}]),
        Node(package='rviz2', executable='rviz2', output='screen',
             arguments=['-d', os.path.join(CONFIG, 'defi.rviz')],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
