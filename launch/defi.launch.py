"""DeFI on a robot: `ros2 launch launch/defi.launch.py checkpoint:=/path/to/ckpt`.

composed:=true (default) runs every component in ONE process (defi_bringup: one model, the three
model stages fused in one worker); composed:=false runs each node as its own process (each loads
the model; the stages talk through their topics).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'config')


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    overrides = {
        'checkpoint': LaunchConfiguration('checkpoint'),
        'camera_topics': LaunchConfiguration('camera_topics'),
        'output_mode': LaunchConfiguration('output_mode'),
        'dry_run': LaunchConfiguration('dry_run'),
    }
    params = [params_file, overrides]
    composed = LaunchConfiguration('composed')
    separate = [
        Node(package='defi_perception', executable='forward_predictor_node', output='screen',
             parameters=params, condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='latent_action_encoder_node', output='screen',
             parameters=params, condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='action_decoder_node', output='screen',
             parameters=params, condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='chunk_executor_node', output='screen',
             parameters=params, condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='execute_instruction_server', output='screen',
             parameters=params, condition=UnlessCondition(composed)),
    ]
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', description='checkpoint directory'),
        DeclareLaunchArgument('camera_topics', default_value="['camera/image_raw']",
                              description='camera topics, one per checkpoint camera (YAML list)'),
        DeclareLaunchArgument('output_mode', default_value='twist',
                              description='twist | joint_trajectory | passthrough'),
        DeclareLaunchArgument('dry_run', default_value='false',
                              description='compute everything, command nothing'),
        DeclareLaunchArgument('composed', default_value='true',
                              description='one process (defi_bringup) or one process per node'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(CONFIG, 'defi_robot.yaml')),
        # no `name=` here: it would rename every node inside the one process
        Node(package='defi_policy', executable='defi_bringup', output='screen',
             parameters=params, condition=IfCondition(composed)),
        *separate,
    ])
