"""DeFI on a robot: `ros2 launch defi_bringup robot.launch.py checkpoint:=/path/to/ckpt`.

Parameters come from params_file (default: this package's config/defi_robot.yaml). A launch argument
below overrides the file's value only when it is given on the command line.
composed:=true (default) runs every component in ONE process (defi_bringup: one model, the three
model stages fused in one worker); composed:=false runs each node as its own process (each loads
the model; the stages talk through their topics).
"""
import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# launch argument = node parameter of the same name: (description, the separate executables that
# take it; defi_bringup takes all). '' (the default) = keep the params file's value.
MODEL_NODES = ['forward_predictor_node', 'latent_action_encoder_node', 'action_decoder_node']
PARAMETER_ARGUMENTS = {
    'checkpoint': ('checkpoint directory', MODEL_NODES),
    'camera_topics': ("the topic of each checkpoint camera by name (YAML list, e.g. \"['front=camera/image_raw']\")",
                      ['forward_predictor_node']),
    'output_mode': ('twist | joint_trajectory | passthrough | chunk', ['chunk_executor_node']),
    'dry_run': ('true: compute everything, command nothing', ['chunk_executor_node']),
}
STRING_ARGUMENTS = ('checkpoint', 'output_mode')   # taken as given, never YAML-parsed


def given_overrides(context) -> dict:
    """{parameter: value} of the parameter arguments given on the command line."""
    out = {}
    for name in PARAMETER_ARGUMENTS:
        text = LaunchConfiguration(name).perform(context)
        if text != '':
            out[name] = text if name in STRING_ARGUMENTS else yaml.safe_load(text)
    return out


def launch_setup(context, *args, **kwargs):
    params_file = LaunchConfiguration('params_file').perform(context)
    given = given_overrides(context)

    def params(executable):
        mine = {k: v for k, v in given.items()
                if executable == 'defi_bringup' or executable in PARAMETER_ARGUMENTS[k][1]}
        return [params_file, mine] if mine else [params_file]
    composed = LaunchConfiguration('composed')
    return [
        # no `name=` here: it would rename every node inside the one process
        Node(package='defi_policy', executable='defi_bringup', output='screen',
             parameters=params('defi_bringup'), condition=IfCondition(composed)),
        Node(package='defi_perception', executable='forward_predictor_node', output='screen',
             parameters=params('forward_predictor_node'), condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='latent_action_encoder_node', output='screen',
             parameters=params('latent_action_encoder_node'), condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='action_decoder_node', output='screen',
             parameters=params('action_decoder_node'), condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='chunk_executor_node', output='screen',
             parameters=params('chunk_executor_node'), condition=UnlessCondition(composed)),
        Node(package='defi_policy', executable='execute_instruction_server', output='screen',
             parameters=params('execute_instruction_server'), condition=UnlessCondition(composed)),
    ]


def generate_launch_description():
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value='', description=f'{text} (default: params_file)')
          for name, (text, _) in PARAMETER_ARGUMENTS.items()],
        DeclareLaunchArgument('composed', default_value='true',
                              description='one process (defi_bringup) or one process per node'),
        DeclareLaunchArgument(
            'params_file', description='ROS parameter file, one section per node name',
            default_value=PathJoinSubstitution([FindPackageShare('defi_bringup'), 'config', 'defi_robot.yaml'])),
        OpaqueFunction(function=launch_setup),
    ])
