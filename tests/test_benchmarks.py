"""The benchmark scripts run as `python benchmarks/<name>.py`, which puts benchmarks/ first on
sys.path: a script named like an installed package would shadow it for every other script
(benchmarks/metaworld.py once broke benchmarks/sim.py's `import metaworld`)."""
import importlib.machinery
import os
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / 'benchmarks'


def test_no_benchmark_script_shadows_an_installed_module():
    here = {str(BENCHMARKS), str(BENCHMARKS.parent), '', os.getcwd()}
    path = [p for p in sys.path if p not in here]
    scripts = sorted(p.stem for p in BENCHMARKS.glob('*.py'))
    assert 'common' in scripts and 'metaworld_ablations' in scripts
    shadowing = [name for name in scripts
                 if name in sys.builtin_module_names
                 or importlib.machinery.PathFinder.find_spec(name, path) is not None]
    assert shadowing == [], f'benchmarks/{shadowing[0]}.py hides the installed module {shadowing[0]!r}'
