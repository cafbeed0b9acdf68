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
    y.add_argument("--spacing-um", type=float, nargs="+", metavar="H", help="voxel size, µm: H or HZ HY HX (default 1)")
    y.add_argument("--seed", type=int, default=0, help="base seed; sample i uses (seed, i) (default 0)")
    y.add_argument("--material", choices=("neo-hookean", "linear", "fiber"), default="neo-hookean",
                   help="matrix law of the FEM (default neo-hookean); fiber: a collagen-like semi-affine fibre network "
                   "(buckling and stiffening, saenopy's collagen values, k = 6 x the cell's gel modulus) for nonlinear "
                   "ground truth")
    y.add_argument("--boundary", choices=("fixed", "free"), default="fixed",
                   help="box faces of the FEM: fixed, or free (traction-free) (default fixed)")
    y.add_argument("--preset", choices=("acquisition",),
                   help="acquisition: like a confocal bead stack -- 0.8 x 0.3 x 0.3 µm voxels, the FEM on a 1.2 µm mesh, "
                   "PSF of NA 0.7 at 0.52 µm with 0.5 µm beads, 0.003-0.05 beads/µm³, cells of radius 6-12 µm "
                   "contracting 0.15-0.4 (max |u| about 0.3-3 µm), drift up to 1.5 µm and axial scaling 0.98-1.02 "
                   "(options given override it)")
    y.add_argument("--fem-spacing-um", type=float, nargs="+", metavar="H",
                   help="FEM mesh spacing, µm: H or HZ HY HX (default: the image grid); beads are rendered at the "
                   "image's voxels with u interpolated at each bead")
    y.add_argument("--numerical-aperture", type=float, help="PSF from the optics (widefield Gaussian approximation) "
                   "instead of the default PSF")
    y.add_argument("--wavelength-um", type=float, help="emission wavelength for --numerical-aperture (default 0.52)")
    y.add_argument("--bead-radius-um", type=float, help="bead radius, added to the PSF (default 0)")
    y.add_argument("--bead-density", type=float, nargs=2, metavar=("LO", "HI"), help="beads per µm³ (default 0.015 0.04)")
    y.add_argument("--cell-radius-um", type=float, nargs=2, metavar=("LO", "HI"), help="cell body radius range, µm (default 3 6)")
    y.add_argument("--contraction", type=float, nargs=2, metavar=("LO", "HI"), help="eigenstrain range (default 0.02 0.15)")
    y.add_argument("--photons", type=float, nargs=2, metavar=("LO", "HI"),
                   help="camera counts at a bead's peak, log-uniform (photon noise; default 60 600)")
    y.add_argument("--read-noise", type=float, help="camera read noise relative to a bead's peak (default 0.02)")
    y.add_argument("--bleaching", type=float, nargs=2, metavar=("LO", "HI"),
                   help="mean fractional brightness loss of the deformed stack (default 0 0.15)")
    y.add_argument("--youngs-modulus-pa", type=float, nargs=2, metavar=("LO", "HI"),
                   help="matrix Young's modulus range, Pa, log-uniform (default 100 10000)")
    y.add_argument("--protrusions", type=int, nargs=2, metavar=("LO", "HI"),
                   help="number of protrusions (branches) per cell, inclusive range (default 0 4)")
    y.add_argument("--drift-um", type=float, nargs=2, metavar=("LO", "HI"),
                   help="rigid shift of the deformed stack, µm, random direction (default 0 0)")
    y.add_argument("--axial-scale", type=float, nargs=2, metavar=("LO", "HI"),
                   help="axial scaling of the deformed stack about the centre (default 1 1)")
    y.add_argument("-o", "--output", required=True, help="dataset file to write (.h5)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=run)


PRESETS = {"acquisition": {"spacing_um": [0.8, 0.3, 0.3], "fem_spacing_um": [1.2], "numerical_aperture": 0.7,
                            "bead_radius_um": 0.5, "bead_density": [0.003, 0.05], "cell_radius_um": [6.0, 12.0],
                            "contraction": [0.15, 0.4], "drift_um": [0.0, 1.5], "axial_scale": [0.98, 1.02]}}


def config_from_args(args):
    import dataclasses

    from ..synth import cells, dataset

    given = {k: v for k, v in vars(args).items() if v is not None}
    opts = {**PRESETS.get(args.preset, {}), **given}
    bead_kw = {}
    if opts.get("numerical_aperture") is not None:
        bead_kw["numerical_aperture"] = opts["numerical_aperture"]
    for key in ("wavelength_um", "bead_radius_um"):
        if opts.get(key) is not None:
            bead_kw[key] = opts[key]
    if opts.get("bead_density"):
        bead_kw["density_per_um3"] = tuple(opts["bead_density"])
    for key, field in (("photons", "photons"), ("bleaching", "bleaching")):
        if opts.get(key):
            bead_kw[field] = tuple(opts[key])
    if opts.get("read_noise") is not None:
        bead_kw["read_noise"] = opts["read_noise"]
    cell_kw = {}
    if opts.get("youngs_modulus_pa"):
        cell_kw["youngs_modulus_pa"] = tuple(opts["youngs_modulus_pa"])
    if opts.get("protrusions"):
        cell_kw["protrusions"] = tuple(opts["protrusions"])
    if opts.get("cell_radius_um"):
        cell_kw["radius_um"] = tuple(opts["cell_radius_um"])
    if opts.get("contraction"):
        cell_kw["contraction"] = tuple(opts["contraction"])
    extra = {}
    if opts.get("fem_spacing_um"):
        extra["fem_spacing_um"] = common.one_or_three(opts["fem_spacing_um"], "--fem-spacing-um", float)
    for key in ("drift_um", "axial_scale"):
        if opts.get(key):
            extra[key] = tuple(opts[key])
    return dataset.SynthConfig(size=common.one_or_three(args.size, "--size", int),
                               spacing_um=common.one_or_three(opts.get("spacing_um", [1.0]), "--spacing-um", float),
                               material=args.material, boundary=args.boundary,
                               cell=dataclasses.replace(cells.CellConfig(), **cell_kw),
                               beads=dataclasses.replace(dataset.BeadConfig(), **bead_kw), **extra)


def run(args) -> int:
    import time

    from ..synth import dataset

    config = config_from_args(args)
    common.check_output(args.output, (".h5", ".hdf5"))
    t0 = time.perf_counter()
    path = dataset.generate(args.output, args.n, seed=args.seed, config=config, progress=common.progress(args))
    if not args.quiet:
        minutes = (time.perf_counter() - t0) / 60
        print(f"wrote {path} ({args.n} samples, {args.n / max(minutes, 1e-9):.1f} samples/min in this run)")
    return 0
