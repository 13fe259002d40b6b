"""defi_core.config_io: the one dataclass <-> YAML <-> key=value layer, and every config going through it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from defi_core import config_io
from defi_core.config_io import ConfigError, setting

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Section:
    topic: str | None = 'cmd'         # where commands come from
    fields: tuple[str, ...] = ('position',)


@dataclass
class Example:
    # --- a section header is not help text ---
    rate: float = 10.0                # frames per second:
                                      # the rate streams are resampled to
    size: int | None = 64
    # picked by name
    mode: str = 'split'
    on: bool = True
    steps: tuple[int, ...] = ()
    names: dict[str, str | None] = field(default_factory=lambda: {'front': 'cam/front'})
    part: Section = field(default_factory=Section)
    limit: float = setting(0.5, 'the largest step (m)', min=0.0, max=1.0)

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f'rate: must be positive, got {self.rate}')


def test_values_are_converted_to_the_field_types():
    ex = config_io.from_dict(Example, {'rate': 5, 'size': None, 'on': 'false', 'steps': [0, 2.0],
                                       'part': {'topic': None, 'fields': ['velocity']}})
    assert ex.rate == 5.0 and isinstance(ex.rate, float) and ex.size is None and ex.on is False
    assert ex.steps == (0, 2) and ex.part == Section(topic=None, fields=('velocity',))
    assert config_io.from_dict(Example, {'size': '32'}).size == 32


@pytest.mark.parametrize('data, message', [
    ({'rate': 'ten'}, "rate: expected a number, got 'ten'"),
    ({'size': 'big'}, "size: expected an integer or null, got 'big'"),
    ({'size': 2.5}, 'size: expected an integer or null, got 2.5'),
    ({'on': 'maybe'}, "on: expected true or false, got 'maybe'"),
    ({'steps': 'first'}, "steps: expected a list of integers, got 'first'"),
    ({'mode': 3}, 'mode: expected a string, got 3'),
    ({'part': {'topic': 5}}, 'part.topic: expected a string or null, got 5'),
    ({'part': {'fields': 'position'}}, "part.fields: expected a list of strings, got 'position'"),
    ({'names': {'front': 1}}, 'names.front: expected a string or null, got 1'),
    ({'part': 'x'}, "part: expected a mapping, got 'x'"),
    ({'ratee': 1}, 'ratee: unknown key (known: rate, size, mode'),
    ({'rate': 0}, 'rate: must be positive, got 0.0'),          # the dataclass's own check
])
def test_a_wrong_value_is_named(data, message):
    with pytest.raises(ConfigError) as err:
        config_io.from_dict(Example, data)
    assert str(err.value).startswith(message), err.value


def test_overrides_set_dotted_keys_and_refuse_unknown_ones():
    data = config_io.apply_overrides({}, ['rate=20', 'part.topic=null', 'names.wrist=cam/wrist',
                                          'steps=[1, 2]', 'mode='], Example)
    ex = config_io.from_dict(Example, data)
    assert ex.rate == 20.0 and ex.part.topic is None and ex.steps == (1, 2) and ex.mode == ''
    assert ex.names == {'front': 'cam/front', 'wrist': 'cam/wrist'}   # one more key on the default
    for word, message in [('bogus=1', "bogus: unknown key ('bogus' is not in Example"),
                          ('part.bogus=1', "part.bogus: unknown key ('bogus' is not in part"),
                          ('part=1', 'part: is a section'),
                          ('rate.x=1', "rate.x: unknown key ('rate' is not a section)"),
                          ('names.front=5', 'names.front: expected a string or null, got 5'),
                          ('noequals', "override 'noequals': expected key=value")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_io.apply_overrides({}, [word], Example)
    assert config_io.is_override('optim.lr=3e-4') and not config_io.is_override('data/x=1.bag')
    assert config_io.parse_override(config_io.format_override('tasks', ('reach-v3', 'push-v3'))) == \
        ('tasks', ['reach-v3', 'push-v3'])


def test_help_comes_from_setting_or_the_source_comments():
    helps = config_io.field_help(Example)
    assert helps['rate'] == 'frames per second: the rate streams are resampled to'
    assert helps['mode'] == 'picked by name' and helps['limit'] == 'the largest step (m)'
    assert helps.get('size', '') == ''
    lines = config_io.describe(Example)
    assert '  rate=10.0   frames per second: the rate streams are resampled to' in lines
    assert '  part.topic=cmd   where commands come from' in lines and '  steps=[]' in lines


def test_load_reads_yaml_then_overrides_and_save_round_trips(tmp_path):
    path = tmp_path / 'ex.yaml'
    path.write_text('rate: 4\npart: {topic: joints}\n')
    ex = config_io.load(Example, path, ['size=16'])
    assert (ex.rate, ex.part.topic, ex.size) == (4.0, 'joints', 16)
    config_io.save(ex, tmp_path / 'back.yaml')
    assert config_io.load(Example, tmp_path / 'back.yaml') == ex
    path.write_text('rate: [1\n')
    with pytest.raises(ConfigError, match=f'config file {path}: not valid YAML'):
        config_io.load(Example, path)
    path.write_text('- 1\n')
    with pytest.raises(ConfigError, match=f'config file {path}: expected a mapping'):
        config_io.load(Example, path)
    path.write_text('rate: fast\n')
    with pytest.raises(ConfigError, match=f"config file {path}: rate: expected a number, got 'fast'"):
        config_io.load(Example, path)
    with pytest.raises(ConfigError, match='nope.yaml: not found'):
        config_io.load(Example, tmp_path / 'nope.yaml')


def test_every_shipped_config_file_is_read_by_the_layer():
    """config/*.yaml: training runs (TrainConfig) and data topic maps (TopicMap), each loaded
    through config_io and saved back unchanged in meaning."""
    from defi_training.topic_map import TopicMap, load_topic_map
    from defi_training.train_config import TrainConfig, load_train_config
    files = sorted((REPO / 'config').glob('*.yaml'))
    assert len(files) >= 6
    for path in files:
        kind = path.name.split('_')[0]
        assert kind in ('train', 'data'), f'{path.name}: which config class reads it?'
        cfg = load_train_config(path) if kind == 'train' else load_topic_map(path)
        assert isinstance(cfg, TrainConfig if kind == 'train' else TopicMap)
        raw = yaml.safe_load(path.read_text())
        assert set(raw) <= set(config_io.to_dict(cfg)), path.name


def test_the_config_classes_round_trip_through_yaml(tmp_path):
    from defi_core.config import DefiConfig, preset
    from defi_sim.evaluate import EvalConfig
    from defi_sim.expert_data import ExpertDataConfig
    from defi_training.topic_map import TopicMap
    from defi_training.train_config import TrainConfig
    for cfg in (preset('tiny', cameras=('front', 'wrist'), action_names=('a', 'b', 'c', 'd')), TrainConfig(),
                TopicMap(image_size=None, action={'source': 'none', 'topic': None}),
                EvalConfig(tasks=('push',), picture_steps=(0, 3)), ExpertDataConfig(cameras=('front=corner',))):
        config_io.save(cfg, tmp_path / 'c.yaml')
        assert config_io.load(type(cfg), tmp_path / 'c.yaml') == cfg, type(cfg).__name__
    assert isinstance(config_io.load(DefiConfig, None, ['horizon=8']), DefiConfig)


def test_the_tools_take_the_same_key_value_words(tmp_path):
    """defi-eval, defi-sim dataset, defi-train and defi-data: key=value sets any config key; the
    flags left are shortcuts for one key each."""
    from defi_sim import eval_cli
    from defi_sim.expert_data import add_dataset_parser, dataset_config
    from defi_training.train_cli import build_parser as train_parser
    from defi_training.train_cli import resolve_config
    args = eval_cli.build_parser().parse_args(['--checkpoint', 'c', '--episodes', '2', 'chunk_delay=3',
                                               'cameras=[front=corner]'])
    config = eval_cli.make_config(args)
    assert (config.episodes, config.chunk_delay, config.cameras) == (2, 3, ('front=corner',))
    import argparse
    sub = argparse.ArgumentParser().add_subparsers(dest='command')
    add_dataset_parser(sub)
    opts = sub.choices['dataset'].parse_args(['--tasks', 'reach', '--noise', '0.1', '--out', 'x',
                                             'extra_observations=3', '--no-actions'])
    data = dataset_config(opts)
    assert (data.tasks, data.noise_std, data.extra_observations, data.with_actions) == (('reach-v3',), 0.1, 3, False)
    cfg, _ = resolve_config(train_parser().parse_args(['gidm', 'steps=7', 'optim.lr=0.5']))
    assert (cfg.steps, cfg.optim.lr) == (7, 0.5)
    with pytest.raises(SystemExit):     # one style: --set is gone
        train_parser().parse_args(['gidm', '--set', 'steps=7'])
