"""`defi-train gfdm|gidm|finetune`: run one training stage.

    defi-train gfdm --config config/train_gfdm.yaml data.cache=data/cache steps=200 model.preset=tiny
    defi-train gidm --config config/train_gidm.yaml data.cache=data/cache --out runs/gidm1
    defi-train finetune --config config/train_finetune.yaml --gfdm runs/gfdm1/final --gidm runs/gidm1/final \
        data.cache=data/labelled model.train_gfdm=true
    defi-train gfdm --resume runs/gfdm1 [steps=400]     # continue exactly where the last checkpoint left off
    torchrun --nproc_per_node 4 $(which defi-train) gfdm --config ...      # DDP (NCCL on GPU, gloo on CPU)

Overrides are `key=value` words with dotted keys of TrainConfig (see train_config.py, or
`defi-train <stage> --help` for the list); `model.<field>` sets any defi_core DefiConfig field, including the ablation
switches gfdm_pretrained, gidm_pretrained, idm_type (gidm|mlp|transformer|none), train_gfdm and
backbone.

Exit codes: 0 done; 2 bad input (a config key, a cache, a checkpoint, an output it cannot write or
a full disk: one line naming it); 1 the run diverged (a NaN/Inf loss: one line naming the stage and
step; the checkpoints written so far stay valid for --resume); 130 Ctrl-C, 143 SIGTERM (a checkpoint
being written is removed, the ones before it stay).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from defi_training.train_config import STAGES, ConfigError, load_train_config


def build_parser() -> argparse.ArgumentParser:
    from defi_core.config import DefiConfig
    from defi_core.config_io import describe
    from defi_training.train_config import TrainConfig
    keys = (['config keys (key=value; default shown):'] + describe(TrainConfig, skip=('model',))
            + ['  model.preset=tiny   tiny | base | large (defi_core presets); then any model field:']
            + describe(DefiConfig, 'model.', skip=('preset_name',)))
    p = argparse.ArgumentParser(prog='defi-train', description=__doc__, epilog='\n'.join(keys),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('stage', choices=STAGES)
    p.add_argument('--config', help='YAML file (config/train_<stage>.yaml); omitted = built-in defaults')
    p.add_argument('--out', help='run directory (default runs/<stage>-<date>)')
    p.add_argument('--resume', metavar='RUN_DIR', help='continue the run in RUN_DIR from its latest checkpoint')
    p.add_argument('--gfdm', metavar='CKPT', help='finetune: GFDM stage export (e.g. runs/gfdm1/final)')
    p.add_argument('--gidm', metavar='CKPT', help='finetune: GIDM stage export')
    p.add_argument('overrides', nargs='*', metavar='key=value', help='config overrides, e.g. steps=200 optim.lr=3e-4')
    return p


def resolve_config(args) -> tuple:
    """(TrainConfig, resume_dir) from parsed arguments."""
    overrides = list(args.overrides)
    if args.gfdm:
        overrides.append(f'gfdm_checkpoint={args.gfdm}')
    if args.gidm:
        overrides.append(f'gidm_checkpoint={args.gidm}')
    if args.resume:
        saved = Path(args.resume) / 'config.yaml'
        if not saved.is_file():
            raise ConfigError(f'--resume {args.resume}: no config.yaml there (not a defi-train run directory)')
        if args.config:
            raise ConfigError('--resume reads the run\'s own config.yaml; drop --config (overrides still apply)')
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError('--resume continues in the run directory; drop --out')
        cfg = load_train_config(saved, stage=args.stage, overrides=overrides)
        return cfg, args.resume
    if args.out:
        overrides.append(f'out_dir={args.out}')
    return load_train_config(args.config, stage=args.stage, overrides=overrides), None


EXIT_DIVERGED = 1      # not bad input: the same command may succeed with another lr or data


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg, resume = resolve_config(args)
    except ConfigError as err:
        print(f'defi-train: {err}', file=sys.stderr)
        return 2
    from dataclasses import replace

    from defi_core.cli import EXIT_INTERRUPTED, run_cli
    from defi_training.train import default_run_dir, train
    if not resume and not cfg.out_dir:
        # named here, so that a full disk's error (numpy and tensorboard give no path) can name it
        cfg = replace(cfg, out_dir=default_run_dir(cfg.stage))

    def body() -> int:
        try:
            export = train(cfg, resume=resume)
        except FloatingPointError as err:          # a NaN/Inf loss, named by train()
            print(f'defi-train: {err}', file=sys.stderr)
            return EXIT_DIVERGED
        except KeyboardInterrupt:
            # the checkpoint being written is gone (save_run_checkpoint), the older ones stay
            print(f'defi-train: interrupted; continue with: defi-train {cfg.stage} --resume '
                  f'{resume or cfg.out_dir}', file=sys.stderr)
            return EXIT_INTERRUPTED
        if os.environ.get('RANK', '0') == '0':
            print(export)
        return 0
    # bad input (a config key, a missing cache or checkpoint, a damaged file) and file-system
    # errors (a read-only or full output) end with one line and exit 2, Ctrl-C with 130
    return run_cli('defi-train', body, writing=resume or cfg.out_dir)


def run() -> None:
    """The `defi-train` / `python -m defi_training.train_cli` entry point."""
    code = main()
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        # Under torchrun, a gloo worker thread may still be freeing the last collectives' tensors
        # when the interpreter finalizes; it then cannot take the GIL and aborts the process
        # (SIGABRT, "terminate called without an active exception") after a finished run. Every
        # file is written and closed by now, so skip interpreter finalization.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == '__main__':
    run()
