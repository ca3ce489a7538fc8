"""`nextqsm-train fit`, `export` and `average` (registered by ``nextqsm_training.cli``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("fit", help="train NeXtQSM (U-Net BFR + VN) and the U-Net baseline from a YAML config",
                              description="Train in bounded chunks: --max-steps N stops at global step N; "
                                          "--resume continues exactly from OUT/last.pt. DDP: run under torchrun.")
    p.add_argument("--config", required=True, help="YAML config (see nextqsm_training/configs/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this global step (default: all)")
    p.add_argument("--out", default=None, help="output folder (overrides out_dir in the config)")
    p.set_defaults(func=_fit)

    e = subparsers.add_parser("export", help="checkpoint -> safetensors weights + manifest entries")
    e.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by `fit`")
    e.add_argument("--weights-dir", default=None, help="target folder (default: the shipped nextqsm/models/weights)")
    e.add_argument("--data", default="", help="free text describing the training data for the manifest")
    e.set_defaults(func=_export)

    a = subparsers.add_parser("average", help="uniform average of checkpoints' model weights (then `export` it)")
    a.add_argument("checkpoints", nargs="+", help="fit checkpoints or OUT/snapshots/step_*.pt of one run")
    a.add_argument("--out", required=True, help="averaged model-only checkpoint to write")
    a.set_defaults(func=_average)


def _average(args: argparse.Namespace) -> int:
    from .train import average_checkpoints

    print(json.dumps(average_checkpoints(args.checkpoints, args.out)))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import fit

    cfg = load_config(args.config)
    if args.out:
        cfg.out_dir = args.out
    res = fit(cfg, resume=args.resume, max_steps=args.max_steps)
    print(json.dumps({k: v for k, v in res.items()}, default=str))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .train import export_checkpoint

    entries = export_checkpoint(args.checkpoint, args.weights_dir, data=args.data)
    print(json.dumps({n: {"file": e["file"], "sha256": e["sha256"]} for n, e in entries.items()}, indent=1))
    return 0
