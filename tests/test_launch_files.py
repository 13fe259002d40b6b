"""Static checks of launch/*.launch.py and config/*.yaml (launch_ros cannot run here).

Each launch file parses; every executable it starts exists in its package's console_scripts;
every params file exists and names only parameters the node really declares; the DeFI nodes load
their YAML files through rclpy's own --params-file handling with the declared types.
"""
import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
EXTERNAL_EXECUTABLES = {('rviz2', 'rviz2')}      # not ours: installed with ROS 2 itself
BUILTIN_PARAMS = {'use_sim_time'}


def console_scripts(package):
    setup = ROOT / 'src' / package / 'setup.py'
    if not setup.exists():
        return None
    return set(re.findall(r"['\"]\s*([\w.-]+)\s*=\s*[\w.]+:\w+\s*['\"]", setup.read_text()))


def node_params():
    """node name -> set of declared parameter names, from each node's parameter dataclass."""
    from defi_perception.forward_predictor_node import ForwardPredictorParams
    from defi_perception.recorder import RecorderConfig
    from defi_policy.action_decoder_node import ActionDecoderParams
    from defi_policy.bringup import BringupParams
    from defi_policy.chunk_executor_node import ChunkExecutorParams
    from defi_policy.execute_instruction_server import ExecuteInstructionParams
    from defi_policy.latent_action_encoder_node import LatentEncoderParams
    from defi_sim.sim_node import SimNodeConfig
    classes = {
        'defi_bringup': BringupParams, 'forward_predictor': ForwardPredictorParams,
        'latent_action_encoder': LatentEncoderParams, 'action_decoder': ActionDecoderParams,
        'chunk_executor': ChunkExecutorParams, 'execute_instruction_server': ExecuteInstructionParams,
        'defi_sim_node': SimNodeConfig, 'defi_recorder': RecorderConfig,
    }
    return {name: {f.name for f in dataclasses.fields(cls)} | BUILTIN_PARAMS
            for name, cls in classes.items()}


# the nodes each executable creates
EXECUTABLE_NODES = {
    'defi_bringup': ['defi_bringup', 'forward_predictor', 'latent_action_encoder', 'action_decoder',
                     'chunk_executor', 'execute_instruction_server'],
    'forward_predictor_node': ['forward_predictor'],
    'latent_action_encoder_node': ['latent_action_encoder'],
    'action_decoder_node': ['action_decoder'],
    'chunk_executor_node': ['chunk_executor'],
    'execute_instruction_server': ['execute_instruction_server'],
    'defi_sim_node': ['defi_sim_node'],
    'defi-record': ['defi_recorder'],
}


def launched_nodes(tree):
    """(package, executable, parameters-AST) of every Node(...) call."""
    out = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', getattr(call.func, 'attr', '')) == 'Node':
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get('package'), ast.Constant), 'Node(package=...) must be a literal'
            assert isinstance(kw.get('executable'), ast.Constant), 'Node(executable=...) must be a literal'
            out.append((kw['package'].value, kw['executable'].value, kw.get('parameters')))
    return out


def yaml_names(node):
    return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)
            and isinstance(c.value, str) and c.value.endswith('.yaml')]


def check_params_file(path: Path, allowed_nodes, declared):
    assert path.exists(), f'params file {path} does not exist'
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f'{path}: empty'
    for node_name, section in data.items():
        assert node_name in allowed_nodes, f'{path.name}: section {node_name!r} is not a node of {allowed_nodes}'
        assert list(section) == ['ros__parameters'], f'{path.name}: {node_name} needs ros__parameters'
        unknown = set(section['ros__parameters']) - declared[node_name]
        assert not unknown, f'{path.name}: {node_name} has no parameter(s) {sorted(unknown)}'


def test_there_are_launch_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {'defi.launch.py', 'sim.launch.py', 'record.launch.py'} <= names


@pytest.mark.parametrize('launch_file', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_executables_and_params(launch_file):
    tree = ast.parse(launch_file.read_text(), filename=str(launch_file))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    declared = node_params()
    nodes = launched_nodes(tree)
    assert nodes, f'{launch_file.name} starts no Node'
    for package, executable, params in nodes:
        if (package, executable) in EXTERNAL_EXECUTABLES:
            continue
        scripts = console_scripts(package)
        assert scripts is not None, f'{launch_file.name}: package {package!r} is not in src/'
        assert executable in scripts, f'{launch_file.name}: {package} has no executable {executable!r}'
        allowed = EXECUTABLE_NODES[executable]
        if params is None:
            continue
        for name in yaml_names(params):
            check_params_file(ROOT / 'config' / name, allowed, declared)
        # inline overrides {'name': ...} must be a parameter of at least one node of the process
        for d in (n for n in ast.walk(params) if isinstance(n, ast.Dict)):
            for key in d.keys:
                assert isinstance(key, ast.Constant)
                assert any(key.value in declared[n] for n in allowed), \
                    f'{launch_file.name}: {executable} has no parameter {key.value!r}'
    # every params_file default named through a variable resolves too
    for name in yaml_names(tree):
        assert (ROOT / 'config' / name).exists(), f'{launch_file.name}: config/{name} missing'


@pytest.mark.parametrize('name', ['defi_robot.yaml', 'defi_sim.yaml'])
def test_defi_params_files_load_with_declared_types(name, tmp_path):
    """Real nodes read the YAML through --params-file: wrong types would raise here."""
    import rclpy
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_policy.execute_instruction_server import ExecuteInstructionServer
    from defi_policy.latent_action_encoder_node import LatentActionEncoderNode
    path = ROOT / 'config' / name
    data = yaml.safe_load(path.read_text())
    ctx = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(path)], context=ctx)
    try:
        for cls in (ForwardPredictorNode, LatentActionEncoderNode, ActionDecoderNode,
                    ChunkExecutorNode, ExecuteInstructionServer):
            node = cls(context=ctx)
            try:
                values = dataclasses.asdict(node.params)
                for key, expected in data.get(node.get_name(), {}).get('ros__parameters', {}).items():
                    assert values[key] == expected, (name, node.get_name(), key)
            finally:
                node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
