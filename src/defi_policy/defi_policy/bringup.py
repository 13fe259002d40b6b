"""defi_bringup: every DeFI component in ONE process, one MultiThreadedExecutor, one model.

The checkpoint is loaded once and the same policy object is handed to the forward predictor, the
latent-action encoder and the action decoder; messages between them still go through real topics
(so each node also runs alone, as its own executable, unchanged). Parameters of every node come
from the usual --ros-args (-p, --params-file with a section per node name).
"""
from __future__ import annotations

from dataclasses import dataclass

from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from defi_perception.forward_predictor_node import ForwardPredictorNode
from defi_perception.node_base import init_ros, load_checkpoint_policy, shutdown_nodes
from defi_perception.params import declare_params

from .action_decoder_node import ActionDecoderNode
from .chunk_executor_node import ChunkExecutorNode
from .execute_instruction_server import ExecuteInstructionServer
from .latent_action_encoder_node import LatentActionEncoderNode


@dataclass
class BringupParams:
    checkpoint: str = ''
    device: str = 'cpu'
    torch_threads: int = 1
    with_action_server: bool = True
    # 0 = auto: 2 (+1 while an ExecuteInstruction goal runs). Inference runs on worker threads,
    # so more executor threads only fight over the GIL (measured: +30 ms median with 6 vs 2)
    executor_threads: int = 0
    autostart: bool = True


def build_nodes(policy, with_action_server: bool = True, **node_kwargs) -> list:
    """The pipeline's nodes sharing `policy` (None: each loads its own 'checkpoint' parameter)."""
    nodes = [ForwardPredictorNode(policy=policy, **node_kwargs),
             LatentActionEncoderNode(policy=policy, **node_kwargs),
             ActionDecoderNode(policy=policy, **node_kwargs),
             ChunkExecutorNode(**node_kwargs)]
    if with_action_server:
        nodes.append(ExecuteInstructionServer(**node_kwargs))
    return nodes


def start_nodes(nodes) -> list:
    """configure + activate every node; returns the names of those that failed."""
    return [n.get_name() for n in nodes if not n.start()]


def main(args=None) -> None:
    init_ros(args)
    host = Node('defi_bringup')
    p = declare_params(host, BringupParams)
    policy = None
    try:
        policy = load_checkpoint_policy(p.checkpoint, p.device, p.torch_threads)
        host.get_logger().info(f'loaded {p.checkpoint} once for all nodes')
    except Exception as exc:  # noqa: BLE001 - the nodes report it in defi/status and keep running
        host.get_logger().error(f'defi_bringup: {exc}')
    nodes = build_nodes(policy, p.with_action_server)
    threads = p.executor_threads or (3 if p.with_action_server else 2)
    executor = MultiThreadedExecutor(num_threads=max(2, threads))
    for n in [host] + nodes:
        executor.add_node(n)
    try:
        if p.autostart:
            failed = start_nodes(nodes)
            if failed:
                host.get_logger().error(f'not started: {failed} (see defi/status last_error)')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # the chunk executor commands its stop before anything is destroyed
        shutdown_nodes(executor, [nodes[3]] + nodes[:3] + nodes[4:] + [host])


if __name__ == '__main__':
    main()
