"""``tfm train``: train the 3D network (bead pair -> displacement and force) on synthetic datasets."""

from __future__ import annotations

import argparse
import json

from ..atomic import jsonable
from . import common


def add_parser(sub) -> None:
    n = sub.add_parser("train", help="train the 3D network (bead pair -> displacement and force) on synthetic datasets",
                       description="Minibatch training of the physics-informed 3D network on datasets written by "
                       "tfm synth (any voxel sizes and matrix laws): each sample goes once through the motion front end "
                       "(cached beside the dataset), then supervised displacement and force, constitutive consistency and "
                       "force-moment losses. Checkpoints go to OUT/checkpoints, the best model (validation loss) to "
                       "OUT/model, one JSON line per epoch to OUT/metrics.jsonl. Run the same command again to resume a "
                       "killed run.",
                       epilog="example:\n  tfm synth --n 800 --size 40 --seed 1 -o train.h5\n"
                       "  tfm train --data train.h5 --out runs/mine --epochs 20\n"
                       "  tfm reconstruct ref.tif def.tif --method dl --model runs/mine --youngs-modulus-pa 1000 -o r.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--data", nargs="+", required=True, help="synthetic dataset files (.h5)")
    n.add_argument("--out", required=True, help="run directory (created; resumed if it holds this run)")
    n.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    n.add_argument("--batch-size", type=int, default=4, help="global minibatch, split over devices (default 4)")
    n.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="adamw, or sgd with Nesterov momentum (default adamw)")
    n.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    n.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    n.add_argument("--widths", type=int, nargs="+", default=[24, 32, 48], help="channels per U-Net level (default 24 32 48)")
    n.add_argument("--no-physics-forward", action="store_true",
                   help="force from the network alone, without the constitutive layer in the forward pass (an ablation)")
    n.add_argument("--drift-fit", choices=("alone", "joint"), default="alone",
                   help="how the stacks' drift is taken out of the motion the network learns from and is later given: "
                   "joint (fitted with the cell's dipole far field, which then stays in the motion, as the DVC does) or "
                   "alone (the shipped weights' convention; default)")
    n.add_argument("--spacing-um", type=float, nargs=3, metavar=("HZ", "HY", "HX"), default=[0.8, 0.6, 0.6],
                   help="finest working voxel, µm: finer stacks are binned toward it by integer factors (default 0.8 0.6 0.6)")
    n.add_argument("--crop", type=int, nargs="+", default=[24, 32, 32],
                   help="crops of the LK grid (half the working grid): N or NZ NY NX, multiples of 8 (default 24 32 32)")
    n.add_argument("--w-displacement", type=float, default=1.0, help="weight of the supervised displacement loss (default 1)")
    n.add_argument("--w-force", type=float, default=1.0, help="weight of the supervised force loss (default 1)")
    n.add_argument("--w-consistency", type=float, default=0.01, help="weight of the constitutive consistency loss (default 0.01)")
    n.add_argument("--w-moments", type=float, default=0.1,
                   help="weight of the force error's net force and first moments (default 0.1)")
    n.add_argument("--w-support", type=float, default=0.1,
                   help="weight of the support map's cross-entropy against the cell (default 0.1)")
    n.add_argument("--val-fraction", type=float, default=0.1, help="samples held out for validation (default 0.1)")
    n.add_argument("--seed", type=int, default=0, help="initialisation, split, batch order and augmentation (default 0)")
    n.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint interval, steps (default 200)")
    n.add_argument("--max-steps", type=int, help="stop after this many steps in total (a later run resumes)")
    n.add_argument("--distributed", action="store_true", help="multi-host: call jax.distributed.initialize() first")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(run=run)


def run(args) -> int:
    from ..learn.optim import OptimConfig
    from ..nn import physics, train
    from ..nn.unet3d import ModelConfig

    cfg = train.TrainConfig(
        data=tuple(args.data),
        model=ModelConfig(widths=tuple(args.widths), physics_forward=not args.no_physics_forward,
                          spacing_um=tuple(args.spacing_um), seed=args.seed, drift_fit=args.drift_fit),
        loss=physics.LossWeights(displacement=args.w_displacement, force=args.w_force, consistency=args.w_consistency,
                                 moments=args.w_moments, support=args.w_support),
        epochs=args.epochs, batch_size=args.batch_size,
        optim=OptimConfig(optimizer=args.optimizer, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps),
        val_fraction=args.val_fraction, crop=common.one_or_three(args.crop, "--crop", int), seed=args.seed,
        checkpoint_every=args.checkpoint_every)
    if args.max_steps is not None and args.max_steps < 1:
        raise common.UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    summary = train.train(cfg, args.out, progress=common.progress(args), max_steps=args.max_steps,
                          distributed=args.distributed)
    if not args.quiet:
        print(json.dumps(jsonable(summary), indent=2))
    return 0
