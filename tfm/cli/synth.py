"""``tfm synth``: a synthetic dataset of random cells, FEM ground truth and bead volume pairs."""

from __future__ import annotations

import argparse

from . import common


def add_parser(sub) -> None:
    y = sub.add_parser("synth", help="generate a synthetic dataset: random cells, FEM ground truth, bead volume pairs",
                       description="Random cells (shape, contractility pattern, matrix stiffness) -> voxel FEM "
                       "(displacement and force ground truth) -> bead volumes rendered by forward mapping with camera "
                       "noise, written to one HDF5 file. A killed run resumes from NAME.h5.partial when restarted "
                       "with the same arguments.",
                       epilog="example:\n  tfm synth --n 1000 --size 48 --seed 0 -o data/synthetic/train48.h5\n"
                       "read it with tfm.synth.dataset.SyntheticDataset(path).batches(8)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    y.add_argument("--n", type=int, required=True, help="number of samples")
    y.add_argument("--size", type=int, nargs="+", default=[48], metavar="N", help="grid size, voxels: N or NZ NY NX (default 48)")
    y.add_argument("--spacing-um", type=float, nargs="+", default=[1.0], metavar="H", help="voxel size, µm: H or HZ HY HX (default 1)")
    y.add_argument("--seed", type=int, default=0, help="base seed; sample i uses (seed, i) (default 0)")
    y.add_argument("--material", choices=("neo-hookean", "linear"), default="neo-hookean",
                   help="matrix law of the FEM (default neo-hookean)")
    y.add_argument("--boundary", choices=("fixed", "free"), default="fixed",
                   help="box faces of the FEM: fixed, or free (traction-free) (default fixed)")
    y.add_argument("-o", "--output", required=True, help="dataset file to write (.h5)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=run)


def run(args) -> int:
    from ..synth import dataset

    config = dataset.SynthConfig(size=common.one_or_three(args.size, "--size", int),
                                 spacing_um=common.one_or_three(args.spacing_um, "--spacing-um", float),
                                 material=args.material, boundary=args.boundary)
    common.check_output(args.output, (".h5", ".hdf5"))
    path = dataset.generate(args.output, args.n, seed=args.seed, config=config, progress=common.progress(args))
    if not args.quiet:
        print(f"wrote {path} ({args.n} samples)")
    return 0
