"""The training data of the shipped 3D network: seeded ``tfm synth`` shards, regenerable.

    python scripts/training_data.py --out data/train [--jobs 2] [--only NAME ...] [--scale 1.0]

Each shard is one ``tfm synth`` call (one voxel size per file); together they span what
a microscope gives: in-plane voxels 0.2-1 µm and axial 0.4-2 µm, bead densities from about
3e-4 to 2e-2 per voxel, PSFs from NA 0.3-0.7, camera noise, photobleaching, drift and axial
scaling between the stacks, cells of 8-50 µm across (elongated, with protrusions) contracting
up to 10 voxels near the cell, E 100 Pa - 10 kPa, linear and neo-Hookean matrices. A killed
run resumes: ``tfm synth`` continues its ``.partial`` file when called again with the same
arguments. ``--scale`` multiplies every shard's sample count (0.1 for a quick trial).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ACQ = ["--preset", "acquisition"]
# name: (samples, seed, tfm synth arguments). acq_neo stops at 85: its 86th cell's
# neo-Hookean solve was still running after 20 minutes (sample i is drawn from (seed, i), so
# the first 85 are the same whatever --n is).
SHARDS = {
    "acq_neo": (85, 4001, ACQ + ["--material", "neo-hookean", "--size", "60", "160", "160", "--contraction", "0.05", "0.45"]),
    "acq_lin": (120, 4002, ACQ + ["--material", "linear", "--size", "60", "160", "160", "--contraction", "0.05", "0.45"]),
    "fine": (80, 4003, ACQ + ["--material", "neo-hookean", "--spacing-um", "0.4", "0.2", "0.2", "--size", "80", "160", "160",
                               "--cell-radius-um", "4", "7", "--bead-density", "0.02", "0.5", "--contraction", "0.05", "0.4"]),
    "coarse": (80, 4004, ACQ + ["--material", "linear", "--spacing-um", "1.5", "0.6", "0.6", "--size", "48", "128", "128",
                                 "--cell-radius-um", "8", "16", "--bead-density", "0.001", "0.02", "--numerical-aperture", "0.45",
                                 "--fem-spacing-um", "2.0", "--contraction", "0.05", "0.4"]),
    "widefield": (60, 4005, ACQ + ["--material", "neo-hookean", "--spacing-um", "2.0", "1.0", "1.0", "--size", "40", "96", "96",
                                    "--cell-radius-um", "10", "22", "--bead-density", "0.0005", "0.01",
                                    "--numerical-aperture", "0.3", "--fem-spacing-um", "3.0", "--contraction", "0.05", "0.35"]),
}


def command(name: str, out: Path, scale: float = 1.0) -> list:
    n, seed, args = SHARDS[name]
    return ["synth", "--n", str(max(1, round(n * scale))), "--seed", str(seed), *args, "--quiet", "-o",
            str(out / f"{name}.h5")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/train", help="folder for the shards")
    p.add_argument("--jobs", type=int, default=2, help="shards generated at once (one process each)")
    p.add_argument("--only", nargs="+", choices=sorted(SHARDS), help="these shards only")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every shard's sample count")
    p.add_argument("--print", action="store_true", help="print the tfm synth commands and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = [n for n in SHARDS if not args.only or n in args.only]
    cmds = {n: command(n, out, args.scale) for n in names}
    if args.print:
        for c in cmds.values():
            print("tfm " + " ".join(c))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not (out / f"{n}.h5").exists()]

    def run(name):
        r = subprocess.run([sys.executable, "-m", "tfm.cli", *cmds[name]])
        print(f"{name}: exit {r.returncode}", flush=True)
        return r.returncode

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        codes = list(pool.map(run, todo))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
