"""``nextqsm-train generate``: write hybrid training pairs to a cache folder (shards or NIfTI)."""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="generate hybrid training pairs (chi, local field, total field, mask)",
        description="Generate hybrid training pairs from label maps (SynthSeg maps, FreeSurfer/SynthSeg "
                    "segmentations or the procedural head) into DIR: sharded .npz files (or NIfTI folders), "
                    "a manifest.json and a QA PNG per shard. Fields and chi in ppm.")
    p.add_argument("--n", type=int, required=True, help="number of pairs")
    p.add_argument("--size", type=int, default=128, help="grid edge in voxels (default 128)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("shards", "nifti"), default="shards",
                   help="shards: .npz shards (training); nifti: one folder per pair with chi, localfield, "
                        "totalfield, mask .nii.gz and pair.json (inspection in Slicer)")
    p.add_argument("--seed", type=int, default=0, help="base seed (pair i uses a seed derived from it and i)")
    p.add_argument("--source", nargs="+", default=None, metavar="SRC",
                   help="label sources: synthseg (training maps 1-12), synthseg:all, synthseg:3,5, procedural, "
                        "or paths to .mgz/.nii label maps or folders of them (default: synthseg if present, "
                        "else procedural)")
    p.add_argument("--shard-size", type=int, default=16, help="pairs per shard / QA sheet (default 16)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default 0: in this process)")
    p.add_argument("--voxel-size", type=float, nargs="+", default=None, metavar="MM",
                   help="fixed voxel size (1 or 3 values, mm); default: fit the brain into the grid")
    p.add_argument("--no-qa", action="store_true", help="skip the QA PNG sheets")
    p.add_argument("--device", default=None, help="torch device (default cpu; e.g. cuda)")
    p.add_argument("--bg-supersample", type=int, default=1, metavar="N",
                   help="background field from external sources on an N-times finer grid, averaged over each voxel "
                        "(harmonic inside the brain for a tilted B0; ~20x the CPU time of a 64^3 pair at N=4: "
                        "use --device cuda for many pairs; default 1)")
    p.add_argument("--bg-tilted-only", action="store_true",
                   help="with --bg-supersample: the fine grid only for pairs with a tilted B0")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from nextqsm.errors import QSMInputError

    from .cache import write_cache

    opts: dict = {}   # fields are stored noise-free; noise is a training-time augmentation
    if args.voxel_size:
        if len(args.voxel_size) not in (1, 3):
            raise QSMInputError("--voxel-size", "needs 1 or 3 values", "e.g. --voxel-size 1 or 1 1 2")
        opts["voxel_size"] = args.voxel_size * 3 if len(args.voxel_size) == 1 else args.voxel_size
    if args.device:
        opts["device"] = args.device
    if args.bg_supersample < 1:
        raise QSMInputError("--bg-supersample", f"must be an integer >= 1, got {args.bg_supersample}",
                            "use 1 (the output grid) or e.g. 4")
    if args.bg_supersample > 1:
        opts["bg_supersample"] = args.bg_supersample
        opts["bg_supersample_tilted_only"] = bool(args.bg_tilted_only)
    m = write_cache(args.out, args.n, args.size, seed=args.seed, sources=args.source, fmt=args.format,
                    shard_size=args.shard_size, qa=not args.no_qa, workers=args.workers, **opts)
    print(f"wrote {sum(s['count'] for s in m['shards'])} pairs to {args.out} in {m.get('seconds', 0):.1f} s")
    return 0
