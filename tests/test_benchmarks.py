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


def test_metaworld_plot_is_a_deterministic_svg_with_every_variant(tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET
    monkeypatch.setattr(sys, 'path', list(sys.path))           # the script puts benchmarks/ first
    before = set(sys.modules)
    try:
        sys.path.insert(0, str(BENCHMARKS))
        import metaworld_ablations as mw
        plan = mw.Plan(seeds=(0,), ks=(5, 10), variants=('full', 'bc_scratch'))
        rows = [{'variant': v, 'k': k, 'mean': m, 'ci95': [m - 0.1, m + 0.1]}
                for v, k, m in (('full', 5, 0.4), ('full', 10, 0.6), ('bc_scratch', 5, 0.2))]
        a = mw.plot_success_vs_k(plan, rows, tmp_path / 'a.svg').read_bytes()
        b = mw.plot_success_vs_k(plan, rows, tmp_path / 'b.svg').read_bytes()
    finally:
        for name in set(sys.modules) - before:
            if name in ('common', 'metaworld_ablations'):
                del sys.modules[name]
    assert a == b                                             # no date, fixed ids: same rows, same file
    texts = {''.join(t.itertext()).strip() for t in ET.fromstring(a).iter('{http://www.w3.org/2000/svg}text')}
    assert {'full', 'bc_scratch', 'K=5', 'K=10', 'demonstrations per task', '100%'} <= texts
