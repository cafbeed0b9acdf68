"""DVC defaults that fit real stacks: windows from the beads, the drift model from the far
field, a dense output with strain, and a compilation cache shared across processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfm
from tfm.classical import dvc, texture
from tfm.synth import beads

from conftest import ROOT


def _stack(shape, spacing, density, psf, seed=0, photons=200.0):
    grid = tfm.Grid(shape, spacing)
    rng = np.random.default_rng(seed)
    pos = beads.random_positions(grid, density, rng)
    vol = beads.render(grid, pos, psf, brightness=rng.lognormal(0.0, 0.3, len(pos)))
    return beads.camera(vol, rng, photons, 0.02, 0.05), grid, pos


@pytest.mark.parametrize("shape, spacing, density, psf", [
    ((40, 96, 96), (0.8, 0.29, 0.29), 4.4e-3, (0.9, 0.3, 0.3)),  # FM-Track: sparse beads, anisotropic voxels
    ((40, 80, 80), (0.5, 0.25, 0.25), 0.08, (0.6, 0.25, 0.25)),  # dense beads on small voxels
])
def test_bead_density_and_size_are_measured(shape, spacing, density, psf):
    vol, grid, _ = _stack(shape, spacing, density, psf)
    st = texture.bead_statistics(vol, grid)
    assert st.density_per_um3 == pytest.approx(density, rel=0.2)  # measured: 1.03x and 0.93x
    assert np.allclose(st.sigma_um, psf, rtol=0.35) and not st.crowded


def test_auto_windows_hold_the_target_bead_count():
    vol, grid, pos = _stack((40, 96, 96), (0.8, 0.29, 0.29), 4.4e-3, (0.9, 0.3, 0.3), seed=1)
    windows, report = texture.choose_windows(texture.bead_statistics(vol, grid), grid)
    last = np.asarray(windows[-1])
    edges = last * np.asarray(grid.spacing_um)
    assert max(edges) / min(edges) < 1.3, edges  # near-cubic in µm, not in voxels (z voxels are 2.7x longer)
    assert windows[0] > windows[-1] and len(windows) == 3
    lay = dvc._Layout.make(grid.shape, tuple(last), tuple(last // 2))  # noqa: SLF001 - the DVC's own window layout
    lo = np.asarray(grid.origin_um) - 0.5 * np.asarray(grid.spacing_um)
    counts = [np.sum(np.all((pos >= lo + s * np.asarray(grid.spacing_um)) & (pos < lo + (s + last) * np.asarray(grid.spacing_um)), 1))
              for s in lay.all_starts()]
    assert np.mean(counts) == pytest.approx(texture.TARGET_BEADS, rel=0.3), np.mean(counts)
    assert report["beads_per_last_window"] == pytest.approx(texture.TARGET_BEADS, rel=0.3)


def _plane_offsets(z_um, seed=3):
    """Drift during a confocal scan: every plane a little further, a random walk in (z, y, x)
    that no affine field follows (µm)."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0.0, 0.12, (80, 3)), 0) * np.array([0.8, 0.3, 0.3])
    walk -= walk.mean(0)
    return np.stack([np.interp(z_um, 0.8 * np.arange(80), walk[:, c]) for c in range(3)], -1)


@pytest.mark.parametrize("kind, expected", [("planes", "slicewise"), ("shift", "rigid")])
def test_the_drift_model_follows_the_far_field(kind, expected):
    grid = tfm.Grid((60, 64, 64), (0.8, 0.3, 0.3))
    rng = np.random.default_rng(7)
    pos = beads.random_positions(grid, 0.03, rng, margin_um=2)
    if kind == "planes":
        fn = lambda q: _plane_offsets(q[:, 0])  # noqa: E731
    else:
        fn = lambda q: np.broadcast_to([0.4, -0.25, 0.55], q.shape)  # noqa: E731
    ref, dfm = beads.render_pair(grid, pos, fn, psf_sigma_um=(0.9, 0.3, 0.3))
    res = tfm.measure_displacement(ref, dfm, grid, windows=((12, 24, 24), (8, 16, 16)))
    assert res.info["drift_model"] == expected, res.info["drift_evidence"]
    assert np.sqrt(np.mean(res.displacement[1:-1, 1:-1, 1:-1] ** 2)) < 0.05  # what is left is no drift (µm)


def test_dense_output_honours_the_windows_and_gives_the_strain():
    grid = tfm.Grid((48, 48, 48), 1.0)
    g = np.array([[0.01, 0.0, 0.02], [0.0, -0.015, 0.0], [0.0, 0.01, 0.005]])  # d u_i / d x_j
    c = np.asarray(grid.center_um())
    fn = lambda q: (q - c) @ g.T + np.array([0.2, -0.1, 0.3])  # noqa: E731
    pos = beads.random_positions(grid, 0.02, np.random.default_rng(2), margin_um=4)
    ref, dfm = beads.render_pair(grid, pos, fn, psf_sigma_um=(1.2, 0.8, 0.8))
    coarse = tfm.measure_displacement(ref, dfm, grid, windows=(16,), drift=None)
    dense = tfm.measure_displacement(ref, dfm, grid, windows=(16,), drift=None, output_spacing_um=2.0)
    assert np.all(np.asarray(dense.grid.spacing_um) == 2.0) and dense.grid.size > 8 * coarse.grid.size
    at = dense.grid.nearest_indices(coarse.grid)
    np.testing.assert_allclose(dense.displacement[np.ix_(*at)], coarse.displacement, atol=1e-4)  # through every window
    inner = (slice(3, -3),) * 3
    err = dense.displacement[inner] - fn(dense.grid.coordinates_um()[inner])
    assert np.sqrt(np.mean(err**2)) < 0.02
    strain = dense.strain()[inner]
    np.testing.assert_allclose(np.median(strain.reshape(-1, 3, 3), 0), 0.5 * (g + g.T), atol=2e-3)
    inv = dense.strain_invariants()
    assert np.median(inv["volumetric"][inner]) == pytest.approx(np.trace(g), abs=2e-3)
    assert dense.info["window_grid"]["shape"] == list(coarse.grid.shape)


PROBE = """
import collections, json
import jax.monitoring as mon
events = collections.Counter()
mon.register_event_listener(lambda name, **kw: events.update([name]))
import numpy as np, tfm
r = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
tfm.measure_displacement(r, np.roll(r, 1, 2), 1.0, windows=(12,), drift=None)
print(json.dumps({"hits": events["/jax/compilation_cache/cache_hits"], "misses": events["/jax/compilation_cache/cache_misses"]}))
"""


def test_a_second_process_loads_its_compiled_code_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_PERSISTENT_CACHE", "JAX_COMPILATION_CACHE"))}
    env["TFM_JAX_CACHE"] = str(tmp_path / "cache")
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["misses"] > 10 and first["hits"] == 0  # everything compiled and stored
    assert second["misses"] == 0 and second["hits"] == first["misses"]  # everything loaded
    env["TFM_JAX_CACHE"] = "off"
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"hits": 0, "misses": 0}  # disabled: not consulted
