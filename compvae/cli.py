"""``compvae``: run one trial outside any search.

    compvae train CONFIG.yaml --out DIR
    compvae train --preset quick --out DIR [--set child.masking_mode=both ...]

An interrupted run (Ctrl-C, a crash) leaves its state in ``DIR/checkpoint``; the same command
again resumes it. A finished run's ``DIR/config.yaml`` retrains to the same ``metrics.json``
on CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from compvae import __version__
from compvae.config import TrialConfig, parse_yaml, preset
from compvae.data import check_trial_data
from compvae.errors import REPORTED, ArgumentParser, TrialFailed, UserError, report_error
from compvae.paths import check_folder


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set mask.threshold=0.01")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_yaml(value, f"--set {item}")
    return out


def load_config(config: str | None, preset_name: str | None, overrides: list[str]) -> TrialConfig:
    if (config is None) == (preset_name is None):
        raise UserError("compvae train: give exactly one of CONFIG.yaml or --preset NAME")
    cfg = preset(preset_name) if preset_name else TrialConfig.from_yaml(config)  # type: ignore[arg-type]
    return cfg.with_updates(_parse_set(overrides)) if overrides else cfg


def _prepare_out(out: Path, cfg: TrialConfig) -> Path:
    """Validate ``--out`` before any work, and return the checkpoint directory inside it."""
    if (out / "metrics.json").exists():
        raise UserError(f"--out {out}: already holds a finished run; choose a new --out or remove it")
    ckpt = out / "checkpoint"
    saved = ckpt / "config.yaml"
    if saved.exists() and TrialConfig.from_yaml(saved) != cfg:
        raise UserError(f"--out {out}: holds an interrupted run of a different config; "
                        "resume it with its own config or choose a new --out")
    ckpt.mkdir(parents=True, exist_ok=True)
    saved.write_text(cfg.to_yaml())
    return ckpt


def cmd_train(args: argparse.Namespace) -> int:
    from compvae.training import resolve_device
    from compvae.trial import run_trial  # heavy imports only once the input is valid

    cfg = load_config(args.config, args.preset, args.set)
    # Everything knowable before training is checked before an --out folder exists: the paths,
    # the device, and the dataset (missing, corrupt, or too small for a batch).
    out = check_folder("--out", args.out)
    parent_store = check_folder("--parent-store", args.parent_store) if args.parent_store else None
    resolve_device(cfg.train.device)
    check_trial_data(cfg)
    created = out if not out.exists() else out / "checkpoint" if not (out / "checkpoint").exists() else None
    ckpt = _prepare_out(out, cfg)
    try:
        metrics = run_trial(cfg, checkpoint_dir=ckpt, out_dir=out, parent_store=parent_store,
                            progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: state kept in {ckpt}; run the same command again to resume", file=sys.stderr)
        return 130
    except (UserError, TrialFailed):
        # Bad input found late (an unreadable image) or a failure of the knobs: a rerun fails
        # the same way, so what this run created is removed; a crash keeps its state to resume.
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    shutil.rmtree(ckpt, ignore_errors=True)
    keys = ["parent/recon_error", "parent/mig", "mask/latent", "mask/coverage", "mask/iou",
            "child/recon_error", "child/masked_recon_error", "child/mig", "child/mig_fine",
            "child/dci_disentanglement"]
    shown = {k: round(metrics[k], 4) for k in keys if k in metrics}
    print(json.dumps(shown, indent=2))
    print(f"outputs in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="compvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one parent -> mask -> child trial")
    train.add_argument("config", nargs="?", help="TrialConfig YAML (e.g. exported from a search)")
    train.add_argument("--preset", help="built-in config: quick (CPU, ~1 min) or paper (GPU)")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set child.masking_mode=both (repeatable)")
    train.add_argument("--parent-store", default=None,
                       help="directory of trained parents to reuse (as a search shares them)")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except REPORTED as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
