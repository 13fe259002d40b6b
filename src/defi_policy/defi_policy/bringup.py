"""defi_bringup: every DeFI component in ONE process, one model.

The checkpoint is loaded once and the same policy object is handed to the forward predictor, the
latent-action encoder and the action decoder. With fuse_model_stages (the default) the forward
predictor's worker runs the three model stages back to back, in-process, and publishes the chunk:
rclpy has no intra-process transport, and a DDS hop per stage (the 128 KB features twice) plus a
thread switch cost ~10 ms per chunk on 2 cores. The features and latent actions are still
published for whoever subscribes (RViz, a recorder). With fuse_model_stages false the stages talk
through their topics, exactly as when each node runs alone as its own executable. Parameters of
every node come from the usual --ros-args (-p, --params-file with a section per node name).
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from defi_perception.forward_predictor_node import ForwardPredictorNode
from defi_ros.bootstrap import init_ros, shutdown_nodes
from defi_ros.model import load_checkpoint_policy
from defi_ros.params import declare_params, param, warn_unknown_parameters

from .action_decoder_node import ActionDecoderNode
from .chunk_executor_node import ChunkExecutorNode
from .execute_instruction_server import ExecuteInstructionServer
from .latent_action_encoder_node import LatentActionEncoderNode


@dataclass
class BringupParams:
    checkpoint: str = param('', 'checkpoint directory, loaded ONCE and shared by every node')
    device: str = param('cpu', 'torch device of the model (cpu, cuda, cuda:1, ...)')
    torch_threads: int = param(0, 'torch intra-op threads of this process; 0 = auto: the CPUs this process '
                               'may use (affinity) less one, at most 4; OMP_NUM_THREADS wins', min=0, max=1024)
    with_action_server: bool = param(True, 'also run the ExecuteInstruction action server')
    autostart: bool = param(True, 'configure and activate every node on start')
    fuse_model_stages: bool = param(True, 'the three model stages back to back in one worker (no DDS '
                                    'between them); false: the stages talk through their topics')
    # 'single': the pipeline nodes on one SingleThreadedExecutor, the action server on its own
    # MultiThreadedExecutor (faster: see make_executors); 'multi': every node on one
    # MultiThreadedExecutor (the first design's layout)
    executor: str = param('single', 'single: pipeline on one thread, action server on its own | '
                          'multi: one MultiThreadedExecutor')

EXECUTORS = ('single', 'multi')


def build_nodes(policy, with_action_server: bool = True, fuse_model_stages: bool = True,
                **node_kwargs) -> list:
    """The pipeline's nodes sharing `policy` (None: each loads its own 'checkpoint' parameter):
    forward predictor, latent-action encoder, action decoder, chunk executor[, action server]."""
    predictor = ForwardPredictorNode(policy=policy, **node_kwargs)
    encoder = LatentActionEncoderNode(policy=policy, in_process=fuse_model_stages, **node_kwargs)
    decoder = ActionDecoderNode(policy=policy, in_process=fuse_model_stages, **node_kwargs)
    if fuse_model_stages:
        predictor.downstream = functools.partial(_latent_then_decode, encoder, decoder)
    nodes = [predictor, encoder, decoder, ChunkExecutorNode(**node_kwargs)]
    if with_action_server:
        nodes.append(ExecuteInstructionServer(**node_kwargs))
    return nodes


def _latent_then_decode(encoder, decoder, stamp, feats, lang, instruction) -> None:
    """The fused stages after the features (on the predictor's worker); each node counts and
    reports its own failures, as when it runs alone."""
    try:
        tokens = encoder.encode(stamp, feats, lang)
    except Exception as exc:  # noqa: BLE001 - reported; the next observation tries again
        encoder.report_failure('latent actions', exc)
        return
    if tokens is None:
        return
    ok, state = decoder.current_state()
    if not ok:
        return
    try:
        decoder.decode(stamp, feats, tokens, lang, instruction, state)
    except Exception as exc:  # noqa: BLE001
        decoder.report_failure('action decoding', exc)


def start_nodes(nodes) -> list:
    """configure + activate every node; returns the names of those that failed."""
    return [n.get_name() for n in nodes if not n.start()]


def make_executors(kind: str, pipeline: list, servers: list) -> tuple[Executor, Executor | None]:
    """(executor spun by main, executor for the action server spun on its own thread or None)."""
    executor: Executor
    if kind == 'multi':
        executor = MultiThreadedExecutor(num_threads=3 if servers else 2)
        for n in pipeline + servers:
            executor.add_node(n)
        return executor, None
    # Every pipeline callback is short (inference runs on worker threads), so one thread serves
    # them all. rclpy's MultiThreadedExecutor rebuilds its wait set (~130 entities here) around
    # each callback it hands to its pool, and re-submits a callback until a pool thread picks it
    # up: that cost 1-5 ms per camera frame on 2 cores (see the package README).
    executor = SingleThreadedExecutor()
    for n in pipeline:
        executor.add_node(n)
    if not servers:
        return executor, None
    goal_executor = MultiThreadedExecutor(num_threads=3)   # a goal's loop holds one thread
    for n in servers:
        goal_executor.add_node(n)
    return executor, goal_executor


def main(args=None) -> None:
    init_ros(args)
    host = Node('defi_bringup')
    try:
        p = declare_params(host, BringupParams)
    except ValueError as exc:   # a wrong-typed value: one line naming the parameter, exit 2
        host.get_logger().fatal(f'defi_bringup: {exc}')
        raise SystemExit(2) from None
    if p.executor not in EXECUTORS:
        host.get_logger().fatal(f"parameter 'executor': {p.executor!r} is not one of {list(EXECUTORS)}")
        raise SystemExit(2)
    policy = None
    try:
        policy = load_checkpoint_policy(p.checkpoint, p.device, p.torch_threads)
        host.get_logger().info(f'loaded {p.checkpoint} once for all nodes')
    except Exception as exc:  # noqa: BLE001 - the nodes report it in defi/status and keep running
        host.get_logger().error(f'defi_bringup: {exc}')
    try:
        nodes = build_nodes(policy, p.with_action_server, p.fuse_model_stages)
    except ValueError as exc:
        host.get_logger().fatal(f'defi_bringup: {exc}')
        raise SystemExit(2) from None
    declared = {name for n in [host] + nodes for name in n.list_parameters([], 0).names}
    warned: set = set()
    for n in [host] + nodes:
        warn_unknown_parameters(n, declared, process='defi_bringup', warned=warned)
    executor, goal_executor = make_executors(p.executor, [host] + nodes[:4], nodes[4:])
    try:
        if p.autostart:
            failed = start_nodes(nodes)
            if failed:
                host.get_logger().error(f'not started: {failed} (see defi/status last_error)')
        if goal_executor is not None:
            threading.Thread(target=goal_executor.spin, name='defi-goals', daemon=True).start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # the chunk executor commands its stop before anything is destroyed
        shutdown_nodes([executor, goal_executor], [nodes[3]] + nodes[:3] + nodes[4:] + [host])


if __name__ == '__main__':
    main()
