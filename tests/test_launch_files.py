"""Checks of defi_bringup's launch files and the ROS parameter files (launch_ros and Gazebo cannot
run here).

Static: each launch file parses, finds its files through FindPackageShare (never __file__), every
executable it starts exists in its package's console_scripts, every file it references is
installed by colcon, and every parameter name in it is a parameter its node declares.
Run against stand-ins of launch/launch_ros (tests/launch_stubs.py): launch arguments override the
params file only when given, and sim.launch.py, defi-eval --mode ros and closed_loop.py share one
parameter description (defi_sim.stack) whose files real rclpy nodes load with the declared types.
"""
import ast
import dataclasses
import re
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import launch_stubs  # noqa: E402

BRINGUP = ROOT / 'src' / 'defi_bringup'
LAUNCH_FILES = sorted((BRINGUP / 'launch').glob('*.launch.py'))
INSTALL = ROOT / 'install'
CHECKPOINT = ROOT / 'models' / 'defi_metaworld'
EXTERNAL_EXECUTABLES = {('rviz2', 'rviz2'), ('ros_gz_bridge', 'parameter_bridge')}   # not ours
BUILTIN_PARAMS = {'use_sim_time'}


def console_scripts(package):
    setup = ROOT / 'src' / package / 'setup.py'
    if not setup.exists():
        return None
    return set(re.findall(r"['\"]\s*([\w.-]+)\s*=\s*[\w.]+:\w+\s*['\"]", setup.read_text()))


def node_params():
    """node name -> set of declared parameter names, from each node's parameter dataclass."""
    from defi_perception.forward_predictor_node import ForwardPredictorParams
    from defi_policy.action_decoder_node import ActionDecoderParams
    from defi_policy.bringup import BringupParams
    from defi_policy.chunk_executor_node import ChunkExecutorParams
    from defi_policy.execute_instruction_server import ExecuteInstructionParams
    from defi_policy.latent_action_encoder_node import LatentEncoderParams
    from defi_recorder.recorder import RecorderConfig
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


def share_files(tree):
    """(package, relative path) of every PathJoinSubstitution([FindPackageShare('pkg'), 'a', 'b'])."""
    out = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'PathJoinSubstitution':
            parts = call.args[0].elts
            head = parts[0]
            assert isinstance(head, ast.Call) and head.func.id == 'FindPackageShare', \
                'a path must start at FindPackageShare(<package>)'
            assert all(isinstance(p, ast.Constant) for p in parts[1:])
            out.append((head.args[0].value, '/'.join(p.value for p in parts[1:])))
    return out


def check_params_file(path: Path, allowed_nodes, declared):
    assert path.exists(), f'params file {path} does not exist'
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f'{path}: empty'
    for node_name, section in data.items():
        assert node_name in allowed_nodes or node_name == '/**', \
            f'{path.name}: section {node_name!r} is not a node of {allowed_nodes}'
        assert list(section) == ['ros__parameters'], f'{path.name}: {node_name} needs ros__parameters'
        names = set(section['ros__parameters'])
        if node_name == '/**':   # a wildcard must reach at least one node that declares the name
            unknown = {n for n in names if not any(n in declared[a] for a in allowed_nodes)}
        else:
            unknown = names - declared[node_name]
        assert not unknown, f'{path.name}: {node_name} has no parameter(s) {sorted(unknown)}'


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} == {'robot.launch.py', 'sim.launch.py', 'record.launch.py',
                                              'gazebo.launch.py'}
    assert not (ROOT / 'launch').exists(), 'launch files belong to src/defi_bringup/launch'


def test_bringup_installs_its_files():
    """colcon installs every launch, params and RViz file of defi_bringup (setup.py data_files)."""
    share = INSTALL / 'defi_bringup' / 'share' / 'defi_bringup'
    for sub in ('launch', 'config', 'rviz'):
        sources = sorted(p.name for p in (BRINGUP / sub).iterdir())
        assert sources, sub
        for name in sources:
            assert (share / sub / name).is_file(), f'{sub}/{name} is not installed (run scripts/setup.sh)'
    sim_share = INSTALL / 'defi_sim' / 'share' / 'defi_sim' / 'config'
    for name in ('sim.yaml', 'defi_sim.yaml'):
        assert (sim_share / name).is_file(), name


@pytest.mark.parametrize('launch_file', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_executables_files_and_params(launch_file):
    text = launch_file.read_text()
    assert '__file__' not in text, 'find files through the package share, not __file__'
    tree = ast.parse(text, filename=str(launch_file))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    declared = node_params()
    nodes = launched_nodes(tree)
    assert nodes, f'{launch_file.name} starts no Node'
    process_nodes = set()
    for package, executable, params in nodes:
        if (package, executable) in EXTERNAL_EXECUTABLES:
            continue
        scripts = console_scripts(package)
        assert scripts is not None, f'{launch_file.name}: package {package!r} is not in src/'
        assert executable in scripts, f'{launch_file.name}: {package} has no executable {executable!r}'
        allowed = EXECUTABLE_NODES[executable]
        process_nodes.update(allowed)
        if params is None:
            continue
        # inline overrides {'name': ...} must be a parameter of at least one node of the process
        for d in (n for n in ast.walk(params) if isinstance(n, ast.Dict)):
            for key in d.keys:
                assert isinstance(key, ast.Constant)
                assert any(key.value in declared[n] for n in allowed), \
                    f'{launch_file.name}: {executable} has no parameter {key.value!r}'
    for package, rel in share_files(tree):
        installed = INSTALL / package / 'share' / package / rel
        assert installed.is_file(), f'{launch_file.name}: {installed} is not installed'
        if rel.endswith('.yaml'):
            check_params_file(installed, sorted(process_nodes), declared)


def load_launch(name):
    return launch_stubs.load(BRINGUP / 'launch' / name)


def params_of(nodes, executable):
    (node,) = [n for n in nodes if n.kwargs['executable'] == executable]
    return node.kwargs['parameters']


def test_robot_launch_arguments_override_only_when_given():
    """No argument given: the params file alone (its dry_run, output_mode and camera topics hold);
    given ones are added as typed overrides."""
    module = load_launch('robot.launch.py')
    default_file = str(INSTALL / 'defi_bringup' / 'share' / 'defi_bringup' / 'config' / 'defi_robot.yaml')
    for composed in ('true', 'false'):
        nodes = launch_stubs.run(module, {'composed': composed})
        started = [n for n in nodes if n.enabled]
        assert len(started) == (1 if composed == 'true' else 5)
        for node in started:
            assert node.kwargs['parameters'] == [default_file]
    given = {'dry_run': 'true', 'camera_topics': "['a/image_raw', 'b/image_raw']", 'checkpoint': '123',
             'params_file': '/x.yaml'}
    nodes = launch_stubs.run(module, given)
    assert params_of(nodes, 'defi_bringup') == [
        '/x.yaml', {'checkpoint': '123', 'camera_topics': ['a/image_raw', 'b/image_raw'], 'dry_run': True}]
    # one process per node: each gets only the parameters it declares
    nodes = launch_stubs.run(module, {**given, 'composed': 'false'})
    assert params_of(nodes, 'forward_predictor_node') == [
        '/x.yaml', {'checkpoint': '123', 'camera_topics': ['a/image_raw', 'b/image_raw']}]
    assert params_of(nodes, 'action_decoder_node') == ['/x.yaml', {'checkpoint': '123'}]
    assert params_of(nodes, 'chunk_executor_node') == ['/x.yaml', {'dry_run': True}]
    assert params_of(nodes, 'execute_instruction_server') == ['/x.yaml']


def test_robot_launch_parameter_arguments_are_parameters_of_their_nodes():
    module = load_launch('robot.launch.py')
    declared = node_params()
    for name, (_, executables) in module.PARAMETER_ARGUMENTS.items():
        assert any(name in declared[n] for n in EXECUTABLE_NODES['defi_bringup']), name
        for executable in executables:
            assert any(name in declared[n] for n in EXECUTABLE_NODES[executable]), (name, executable)


def test_record_launch_out_dir_only_when_given():
    module = load_launch('record.launch.py')
    default_file = str(INSTALL / 'defi_bringup' / 'share' / 'defi_bringup' / 'config' / 'defi_record.yaml')
    assert params_of(launch_stubs.run(module, {}), 'defi-record') == [default_file]
    assert params_of(launch_stubs.run(module, {'out_dir': 'bags'}), 'defi-record') == [
        default_file, {'out_dir': 'bags'}]


def test_gazebo_launch_bridges_camera_joints_clock_and_command_to_defi(tmp_path, monkeypatch):
    """gazebo.launch.py (cannot run here: no Gazebo, no ros_gz_bridge): the bridge config maps the
    given Gazebo topics onto the topics defi_bringup uses, in the right direction and types."""
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))      # the files the launch writes
    module = load_launch('gazebo.launch.py')
    given = {'gz_camera_topic': '/world/w/model/arm/link/cam/sensor/cam/image', 'gz_cmd_topic': '/model/arm/cmd',
             'gz_joint_state_topic': '/world/w/model/arm/joint_state'}
    nodes = launch_stubs.run(module, given)
    (bridge_params,) = params_of(nodes, 'parameter_bridge')
    entries = {e['ros_topic_name']: e for e in yaml.safe_load(Path(bridge_params['config_file']).read_text())}
    assert set(entries) == {'/clock', 'camera/image_raw', 'servo_node/delta_twist_cmds', 'joint_states'}
    assert entries['camera/image_raw']['gz_topic_name'] == given['gz_camera_topic']
    assert entries['camera/image_raw']['direction'] == 'GZ_TO_ROS'
    cmd = entries['servo_node/delta_twist_cmds']
    assert (cmd['gz_topic_name'], cmd['direction'], cmd['ros_type_name']) == (
        '/model/arm/cmd', 'ROS_TO_GZ', 'geometry_msgs/msg/TwistStamped')
    params_file, wiring = params_of(nodes, 'defi_bringup')
    declared = node_params()
    for key in wiring:
        assert any(key in declared[n] for n in EXECUTABLE_NODES['defi_bringup']), key
    assert 'checkpoint' not in wiring                  # not given: the params file's
    assert wiring['twist_topic'] == 'servo_node/delta_twist_cmds' and wiring['use_sim_time'] is True
    # what the bridge carries is what the nodes read and write
    values = bringup_values([params_file, _as_params_file(wiring, Path(bridge_params['config_file']).parent)])
    assert values['forward_predictor']['camera_topics'] == ['camera/image_raw']
    assert values['chunk_executor']['output_mode'] == 'twist'
    nodes = launch_stubs.run(module, {k: v for k, v in given.items() if k != 'gz_joint_state_topic'})
    (bridge_params,) = params_of(nodes, 'parameter_bridge')
    bridged = yaml.safe_load(Path(bridge_params['config_file']).read_text())
    assert 'joint_states' not in {e['ros_topic_name'] for e in bridged}


def _as_params_file(values: dict, folder: Path) -> Path:
    """A launch_ros parameter dict as the file it becomes (every node of the process)."""
    path = folder / 'defi_gz_wiring_test.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path


def sim_node_config(files):
    """SimNodeConfig as defi_sim_node reads it from these params files (without building the sim)."""
    import rclpy
    from rclpy.node import Node

    from defi_sim.sim_node import SimNodeConfig
    args = ['--ros-args']
    for f in files:
        args += ['--params-file', str(f)]
    ctx = rclpy.Context()
    rclpy.init(args=args, context=ctx)
    try:
        node = Node('defi_sim_node', context=ctx)
        try:
            for name, value in vars(SimNodeConfig()).items():
                node.declare_parameter(name, value)
            return SimNodeConfig(**{n: node.get_parameter(n).value for n in vars(SimNodeConfig())})
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def bringup_values(files) -> dict:
    """node name -> parameter values of the DeFI nodes started with these params files."""
    import rclpy
    from rclpy.node import Node

    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_policy.bringup import BringupParams
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_policy.execute_instruction_server import ExecuteInstructionServer
    from defi_policy.latent_action_encoder_node import LatentActionEncoderNode
    from defi_ros.params import declare_params
    args = ['--ros-args']
    for f in files:
        args += ['--params-file', str(f)]
    ctx = rclpy.Context()
    rclpy.init(args=args, context=ctx)
    out = {}
    try:
        bringup = Node('defi_bringup', context=ctx)
        out['defi_bringup'] = dataclasses.asdict(declare_params(bringup, BringupParams))
        bringup.destroy_node()
        for cls in (ForwardPredictorNode, LatentActionEncoderNode, ActionDecoderNode,
                    ChunkExecutorNode, ExecuteInstructionServer):
            node = cls(context=ctx)
            out[node.get_name()] = dataclasses.asdict(node.params)
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    return out


def test_sim_launch_uses_the_shared_stack_at_the_checkpoint_size(tmp_path, monkeypatch):
    """sim.launch.py: the installed base files, then the checkpoint's values: the sim renders at
    the checkpoint's 64 px, the predictor reads its camera, the decoder names the sim's actions."""
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))      # the files the launch writes
    module = load_launch('sim.launch.py')
    nodes = launch_stubs.run(module, {'checkpoint': str(CHECKPOINT), 'task': 'reach-v3'})
    sim_files, bringup_files = params_of(nodes, 'defi_sim_node'), params_of(nodes, 'defi_bringup')
    share = INSTALL / 'defi_sim' / 'share' / 'defi_sim' / 'config'
    assert Path(sim_files[0]) == share / 'sim.yaml' and Path(bringup_files[0]) == share / 'defi_sim.yaml'
    declared = node_params()
    for f in sim_files:
        check_params_file(Path(f), EXECUTABLE_NODES['defi_sim_node'], declared)
    for f in bringup_files:
        check_params_file(Path(f), EXECUTABLE_NODES['defi_bringup'], declared)
    cfg = sim_node_config(sim_files)
    assert (cfg.image_width, cfg.image_height, cfg.task, cfg.mode) == (64, 64, 'reach-v3', 'realtime')
    values = bringup_values(bringup_files)
    assert values['defi_bringup']['checkpoint'] == str(CHECKPOINT.resolve())
    assert values['forward_predictor']['camera_topics'] == ['front=camera/front/image_raw']   # by name
    # the predicted frames name the camera frame the sim publishes on TF (defi_sim.description)
    assert values['forward_predictor']['frame_id'] == 'front_camera_optical_frame'
    assert values['action_decoder']['action_names'] == []        # the checkpoint's: what the sim takes
    from defi_core.checkpoint import checkpoint_facts
    assert checkpoint_facts(CHECKPOINT).action_names == ('dx', 'dy', 'dz', 'gripper')
    assert values['chunk_executor']['output_mode'] == 'chunk'      # the sim times the rows itself
    assert values['execute_instruction_server']['success_topic'] == 'sim/success'


def test_eval_ros_parameters_are_the_stack_plus_its_overrides(tmp_path):
    """defi-eval --mode ros: the same base files; its overrides (lockstep, sim time, rates, threads)
    reach the nodes, and '/**' values beat the base file's defi_bringup section."""
    from defi_sim.evaluate import EvalConfig
    from defi_sim.evaluate_ros import _write_stack
    config = EvalConfig(tasks=('button-press-topdown-v3',), max_steps=200)
    stack = _write_stack(tmp_path, CHECKPOINT, config, chunk_dt=0.025, threads=2)
    share = INSTALL / 'defi_sim' / 'share' / 'defi_sim' / 'config'
    assert [Path(stack.sim_params[0]), Path(stack.bringup_params[0])] == [share / 'sim.yaml', share / 'defi_sim.yaml']
    cfg = sim_node_config(stack.sim_params)
    assert (cfg.image_width, cfg.mode, cfg.max_episode_steps, cfg.cameras) == (64, 'lockstep', 200, ['front=corner'])
    values = bringup_values(stack.bringup_params)
    assert values['defi_bringup']['torch_threads'] == 2           # base file says 1
    assert values['forward_predictor']['control_rate_hz'] == pytest.approx(40.0)
    assert values['forward_predictor']['preview_rate_hz'] == 0.0
    assert values['action_decoder']['action_names'] == []        # the checkpoint's: what the sim takes
    from defi_core.checkpoint import checkpoint_facts
    assert checkpoint_facts(CHECKPOINT).action_names == ('dx', 'dy', 'dz', 'gripper')
    assert values['chunk_executor']['start_enabled'] is False


@pytest.mark.parametrize('path', [BRINGUP / 'config' / 'defi_robot.yaml',
                                  ROOT / 'src' / 'defi_sim' / 'config' / 'defi_sim.yaml'],
                         ids=lambda p: p.name)
def test_defi_params_files_load_with_declared_types(path):
    """Real nodes read the YAML through --params-file: wrong types would raise here."""
    data = yaml.safe_load(path.read_text())
    values = bringup_values([path])
    for node_name, section in data.items():
        for key, expected in section['ros__parameters'].items():
            assert values[node_name][key] == expected, (path.name, node_name, key)
