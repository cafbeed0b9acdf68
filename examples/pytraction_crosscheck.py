"""Cross-check of tfm's 2D FTTC and Bayesian regularisation against pytraction.

    python examples/pytraction_crosscheck.py [--data ../shared/data/pytraction_bayesian_2d] [--out DIR]

Input: pytraction's two reference cases. (1) Its test field (matlab_data.csv: a
synthetic displacement on a 51 x 51 grid, 10 px apart, with a separate noise sample) and
the traction-magnitude map its Bayesian FTTC produces from it (E = 10 kPa, nu = 0.3,
1.3 px per µm, beta = 1 / var(noise), lambda L = 145.84). (2) A real frame
(example_dataset.h5: its PIV positions and vectors, beta = 3.59, L = 1719.90 and traction
map; E = 100 Pa, nu = 0.5, for which 0.4999 stands in here).

Conventions, converted here and nowhere else:

* pytraction works in pixels with E = 1 and multiplies tractions by E afterwards; its
  lambda L is in px² per unit modulus². tfm works in µm and Pa, so the same Tikhonov
  problem has ``alpha = L * (µm per px)^2 / E^2``.
* pytraction interpolates the vectors (cubic, scipy ``griddata``) from their displaced
  positions ``pos + u`` onto a 50 x 50 grid starting half a mesh cell inside the data,
  reconstructs there, transposes and flips rows (image orientation). The same
  interpolation is done here, then tfm reconstructs on that grid and the map is put in
  pytraction's orientation.
* pytraction does not pad; tfm is run with ``pad="none"`` for the comparison, except in
  ``default_call``: ``tfm.reconstruct_tractions(u, grid, gel)`` as a user calls it, with no
  noise sample (the noise is estimated from the field) and the default padding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.interpolate import griddata

import tfm
from tfm.atomic import write_json

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pytraction_bayesian_2d"
E, NU, PX_PER_UM, MESH_PX, L_PYTRACTION = 10000.0, 0.3, 1.3, 10.0, 145.84


def load(data: Path):
    d = np.genfromtxt(data / "pytraction_tests_data" / "matlab_data.csv", delimiter=",", names=True, encoding="utf-8-sig")
    n = int(round(np.sqrt(d.size)))
    x, y = d["x"].reshape(n, n), d["y"].reshape(n, n)  # x runs fastest: arrays are [y, x]
    if not (np.allclose(np.diff(x[0]), MESH_PX) and np.allclose(np.diff(y[:, 0]), MESH_PX)):
        raise ValueError("unexpected layout of matlab_data.csv")
    u_px = np.stack([d["v"].reshape(n, n), d["u"].reshape(n, n)], -1)  # (u_y, u_x)
    noise_px = np.concatenate([d["un"], d["vn"]])
    expected = np.load(data / "pytraction_tests_data" / "test_matlab_expected_traction_magnitude_int.npy")
    return x, y, u_px, noise_px, expected


def compare_field(pos_px, vec_px, noise_var_px2, youngs_pa, nu, lam_pytraction, expected) -> dict:
    """Run tfm on pytraction's inputs the way pytraction does, compare with its map.

    ``pos_px``, ``vec_px``: (N, 2) positions and displacements (x, y) in pixels;
    ``expected``: pytraction's traction-magnitude map, rows y descending (image orientation).
    """
    um_per_px = 1.0 / PX_PER_UM
    # pytraction's grid: from the smallest displaced position, (i + 1/2) mesh cells, an even count.
    new = pos_px + vec_px
    lo, hi = new.min(0), new.max(0)
    n = np.floor((hi - lo) / MESH_PX).astype(int)
    n -= n % 2
    gx = lo[0] + (np.arange(n[0]) + 0.5) * MESH_PX
    gy = lo[1] + (np.arange(n[1]) + 0.5) * MESH_PX
    GY, GX = np.meshgrid(gy, gx, indexing="ij")
    ug = np.stack([np.nan_to_num(griddata(new, vec_px[:, c], (GX, GY), method="cubic")) for c in (1, 0)], -1)  # (u_y, u_x)
    grid = tfm.Grid(ug.shape[:2], MESH_PX * um_per_px, origin_um=(gy[0] * um_per_px, gx[0] * um_per_px))
    u = ug * um_per_px
    noise_var = noise_var_px2 * um_per_px**2  # pytraction: beta = 1 / var(noise)
    gel = tfm.LinearElastic(youngs_pa, nu)
    alpha_pt = lam_pytraction * um_per_px**2 / youngs_pa**2

    ours = tfm.reconstruct_tractions(u, grid, gel, regularization="bayesian", pad="none", noise_variance=noise_var)
    same = tfm.reconstruct_tractions(u, grid, gel, regularization=alpha_pt, pad="none")
    default = tfm.reconstruct_tractions(u, grid, gel)  # what a user without a noise sample gets
    out = {"grid": list(grid.shape), "alpha_pytraction_converted": alpha_pt, "alpha_tfm_bayesian": ours.info["alpha"],
           "lambda_tfm_in_pytraction_units": ours.info["alpha"] * youngs_pa**2 / um_per_px**2, "lambda_pytraction": lam_pytraction,
           "expected_max_pa": float(expected.max()), "expected_rms_pa": float(np.sqrt(np.mean(expected**2.0)))}
    out["default_call"] = {"alpha": default.info["alpha"], "rule": default.info["regularization_rule"],
                           "noise_std_estimated_um": float(np.sqrt(default.info["regularization_noise_variance_um2"])),
                           "noise_std_sample_um": float(np.sqrt(noise_var))}
    for name, res in (("same_alpha", same), ("tfm_bayesian_alpha", ours), ("default_call", default)):
        mag = np.linalg.norm(res.force, axis=-1)[::-1]  # rows: y descending, as pytraction's map
        if mag.shape != expected.shape:
            raise ValueError(f"grid {mag.shape} does not match pytraction's map {expected.shape}")
        diff = mag - expected
        out.setdefault(name, {}).update(
            rms_difference_pa=float(np.sqrt(np.mean(diff**2))), max_abs_difference_pa=float(np.abs(diff).max()),
            correlation=float(np.corrcoef(mag.ravel(), expected.ravel())[0, 1]), max_pa=float(mag.max()),
            mean_magnitude_ratio=float(mag.mean() / expected.mean()))
    return out


def compare(data: Path) -> dict:
    """Both of pytraction's reference cases: the synthetic field and the real frame."""
    x, y, u_px, noise_px, expected = load(data)
    pos = np.stack([x.ravel(), y.ravel()], -1)
    vec = np.stack([u_px[..., 1].ravel(), u_px[..., 0].ravel()], -1)
    out = {"synthetic": compare_field(pos, vec, float(np.var(noise_px)), E, NU, L_PYTRACTION, expected)}
    import h5py

    with h5py.File(data / "pytraction_tests_data" / "example_dataset.h5", "r") as h:
        pos_r, vec_r = h["pos/0"][...].T, h["vec/0"][...].T
        beta, lam = float(h["beta/0"][()]), float(h["L/0"][()])
        tmap = h["traction_map/0"][...]
    # The frame used E = 100 Pa and nu = 0.5; tfm's LinearElastic excludes nu = 0.5 (lambda
    # diverges), so 0.4999 stands in: the half-space kernel changes by about 1e-4.
    out["real_frame"] = compare_field(pos_r, vec_r, 1.0 / beta, 100.0, 0.4999, lam, tmap)
    out["real_frame"]["note"] = "nu = 0.4999 stands in for pytraction's 0.5"
    out["real_frame_piv"] = compare_piv(data)
    return out


def compare_piv(data: Path) -> dict:
    """tfm's PIV (the DVC correlator, flat windows) on the real frame's bead images
    against pytraction's own PIV vectors (OpenPIV, 32 px windows, 50 % overlap).

    pytraction's positions count y from the image bottom and its y displacement points
    up; frame 1 of stack_bead_roi is the reference. pytraction registers the images
    before its PIV (``allign_slice``), which is not replicated here: tfm removes its own
    rigid drift instead.
    """
    import h5py
    from scipy.interpolate import RegularGridInterpolator

    with h5py.File(data / "pytraction_tests_data" / "example_dataset.h5", "r") as h:
        stack, pos, vec = h["stack_bead_roi/0"][...], h["pos/0"][...].T, h["vec/0"][...].T
    res = tfm.measure_displacement(stack[1], stack[0], 1.0, windows=(64, 32), progress=False, drift="rigid")
    itp = [RegularGridInterpolator(res.grid.axes_um(), res.displacement[..., c], bounds_error=False) for c in range(2)]
    q = np.stack([stack.shape[1] - 1 - pos[:, 1], pos[:, 0]], -1)  # (row, col)
    ours = np.stack([itp[1](q), -itp[0](q)], -1)  # (u_x, u_y up), px
    ok = np.all(np.isfinite(ours), 1)
    d = ours[ok] - vec[ok]
    return {"vectors": int(ok.sum()), "rms_difference_px": float(np.sqrt(np.mean(np.sum(d**2, 1)))),
            "median_difference_px": np.median(d, 0).tolist(), "median_magnitude_px": float(np.median(np.linalg.norm(vec[ok], axis=1))),
            "correlation_x": float(np.corrcoef(ours[ok, 0], vec[ok, 0])[0, 1]),
            "correlation_y": float(np.corrcoef(ours[ok, 1], vec[ok, 1])[0, 1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT))
    p.add_argument("--out", help="write the comparison as JSON here")
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    out = compare(Path(args.data))
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "pytraction_crosscheck.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
