"""Record robot episodes as rosbag2: `ros2 launch launch/record.launch.py out_dir:=recordings`."""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'config')


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('out_dir', default_value='recordings'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(CONFIG, 'defi_record.yaml')),
        Node(package='defi_perception', executable='defi-record', output='screen',
             parameters=[LaunchConfiguration('params_file'),
                         {'out_dir': LaunchConfiguration('out_dir')}]),
    ])
