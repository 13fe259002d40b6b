"""The benchmark scripts run as `python benchmarks/<name>.py`, which puts benchmarks/ first on
sys.path: a script named like an installed package would shadow it for every other script
(benchmarks/metaworld.py once broke benchmarks/sim.py's `import metaworld`)."""
import importlib.machinery
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / 'benchmarks'


def _installed(spec) -> bool:
    return spec is not None and spec.has_location      # a namespace folder shadows nothing


def test_no_benchmark_script_shadows_an_installed_module():
    # what is installed (stdlib, venv, colcon install, a system ROS), not the checkout's own
    # folders that pytest puts on sys.path too (tests/defi_core has a data/ folder, for one)
    path = [p for p in sys.path if 'site-packages' in p or 'dist-packages' in p
            or (p and p.startswith(sys.base_prefix))]
    scripts = sorted(p.stem for p in BENCHMARKS.glob('*.py'))
    assert 'common' in scripts and 'sim' in scripts
    shadowing = [name for name in scripts
                 if name in sys.builtin_module_names
                 or _installed(importlib.machinery.PathFinder.find_spec(name, path))]
    assert shadowing == [], f'benchmarks/{shadowing[0]}.py hides the installed module {shadowing[0]!r}'
