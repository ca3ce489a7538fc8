"""`nextqsm-train fit`, `export`, `average`, `blend` and `calibrate-level` (registered by ``nextqsm_training.cli``)."""
from __future__ import annotations

import argparse
import json


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

    b = subparsers.add_parser("blend", help="weight-space interpolation of two weights folders' VN: (1 - alpha) A + alpha B",
                              description="Writes OUT: a copy of A's folder with nextqsm-vn replaced by the blend "
                                          "(A's level, no per-path levels: calibrate the new folder).")
    b.add_argument("a", help="weights folder A")
    b.add_argument("b", help="weights folder B (same VN architecture)")
    b.add_argument("--alpha", type=float, required=True, help="weight of B, 0..1")
    b.add_argument("--out", required=True, help="new weights folder")
    b.set_defaults(func=_blend)

    c = subparsers.add_parser("calibrate-level", help="fit the VN's chi level on generator data or test heads (manifest 'level')",
                              description="Measure the VN's bias of chi's mean over the brain on generator items "
                                          "(the level no local field carries) and record its correction in the "
                                          "weights folder's manifest; the safetensors file is unchanged.")
    c.add_argument("--config", default=None, help="YAML config whose data section generates the items")
    c.add_argument("--heads", type=int, nargs="*", default=None, metavar="MAP",
                   help="calibrate on test heads from these SynthSeg training maps instead (default maps 5-12; "
                        "9-12 with B0 tilted 25 degrees), through the default pipeline from the total field")
    c.add_argument("--size", type=int, default=160, help="--heads: grid edge in voxels (default 160 at 1 mm)")
    c.add_argument("--voxel-mm", type=float, default=1.0,
                   help="--heads: isotropic voxel size in mm; 0 fits the brain into the grid (default 1)")
    c.add_argument("--per-path", action="store_true",
                   help="--heads: record the level for the heads' background-removal path only (manifest "
                        "'levels'), overriding arch.level there (LBV at 1 mm; V-SHARP at --size 64 --voxel-mm 0)")
    c.add_argument("--local", action="store_true",
                   help="--heads: feed the heads' true local field (the --input local path) instead of the total field")
    c.add_argument("--weights-dir", required=True, help="weights folder holding nextqsm-vn")
    c.add_argument("--n", type=int, default=None, help="number of generator items (default 48)")
    c.add_argument("--seed", type=int, default=None, help="generator seed (default 104729)")
    c.add_argument("--dry-run", action="store_true", help="measure and print, do not write the manifest")
    c.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import CALIBRATION_ITEMS, CALIBRATION_SEED, HEAD_MAPS, calibrate_level, calibrate_level_on_heads

    if args.heads is not None:
        rec = calibrate_level_on_heads(args.weights_dir, maps=tuple(args.heads) or HEAD_MAPS, size=args.size,
                                       voxel_mm=args.voxel_mm or None, write=not args.dry_run,
                                       per_path=args.per_path, kind="local" if args.local else "total",
                                       log=lambda s: print(s, flush=True))
        print(json.dumps({k: v for k, v in rec.items() if k != "heads"}, indent=1))
        return 0
    if args.config is None:
        raise SystemExit("calibrate-level: pass --config C (generator items) or --heads [MAP ...] (test heads)")
    rec = calibrate_level(args.config, args.weights_dir, n=args.n or CALIBRATION_ITEMS,
                          seed=CALIBRATION_SEED if args.seed is None else args.seed, write=not args.dry_run)
    print(json.dumps(rec, indent=1))
    return 0


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


def _blend(args: argparse.Namespace) -> int:
    from .train import blend_weights

    e = blend_weights(args.a, args.b, args.alpha, args.out)
    print(json.dumps({k: e[k] for k in ("file", "sha256", "parameters", "training")}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .train import export_checkpoint

    entries = export_checkpoint(args.checkpoint, args.weights_dir, data=args.data)
    print(json.dumps({n: {"file": e["file"], "sha256": e["sha256"]} for n, e in entries.items()}, indent=1))
    return 0
