"""DeFI closed loop in the MuJoCo simulation:
`ros2 launch defi_bringup sim.launch.py checkpoint:=/path/to/ckpt [task:=reach-v3] [rviz:=true]`.

defi_sim_node (Meta-World task, camera/<view>/image_raw, reads defi/action_command) and the
one-process DeFI bringup (executor output_mode chunk), with the same parameters as `defi-eval --mode ros`
and benchmarks/closed_loop.py: defi_sim.stack (share/defi_sim/config/sim.yaml and defi_sim.yaml,
images and cameras from the checkpoint) plus the arguments given here. RViz optionally.
"""
import tempfile

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def launch_setup(context, *args, **kwargs):
    from defi_sim.stack import write_sim_stack
    checkpoint = LaunchConfiguration('checkpoint').perform(context)
    task = LaunchConfiguration('task').perform(context)
    sim = {'task': task} if task else {}      # given: overrides sim.yaml
    stack = write_sim_stack(tempfile.mkdtemp(prefix='defi_sim_launch_'), checkpoint or None, sim=sim)
    return [
        Node(package='defi_sim', executable='defi_sim_node', output='screen',
             parameters=[str(p) for p in stack.sim_params]),
        Node(package='defi_policy', executable='defi_bringup', output='screen',
             parameters=[str(p) for p in stack.bringup_params]),
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', description='checkpoint directory'),
        DeclareLaunchArgument('task', default_value='', description='Meta-World task (default: sim.yaml)'),
        DeclareLaunchArgument('rviz', default_value='false'),
        OpaqueFunction(function=launch_setup),
        Node(package='rviz2', executable='rviz2', output='screen',
             arguments=['-d', PathJoinSubstitution([FindPackageShare('defi_bringup'), 'rviz', 'defi.rviz'])],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
