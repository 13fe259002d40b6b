"""Record robot episodes as rosbag2: `ros2 launch defi_bringup record.launch.py [out_dir:=recordings]`.

Parameters from params_file (default: this package's config/defi_record.yaml); out_dir overrides
the file's value only when given.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def launch_setup(context, *args, **kwargs):
    params = [LaunchConfiguration('params_file').perform(context)]
    out_dir = LaunchConfiguration('out_dir').perform(context)
    if out_dir:
        params.append({'out_dir': out_dir})
    return [Node(package='defi_recorder', executable='defi-record', output='screen', parameters=params)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('out_dir', default_value='',
                              description='directory of the episode bags (default: params_file)'),
        DeclareLaunchArgument(
            'params_file', description='ROS parameter file (section defi_recorder)',
            default_value=PathJoinSubstitution([FindPackageShare('defi_bringup'), 'config', 'defi_record.yaml'])),
        OpaqueFunction(function=launch_setup),
    ])
