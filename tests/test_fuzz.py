"""Fuzzing the public API's array arguments (hypothesis): shapes, dtypes, NaN / inf,
extreme magnitudes and spacings. Every call either returns finite results or raises a
ValueError / TypeError whose message names the offending argument."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tfm  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = (np.float32, np.float32, np.float64, np.float16, np.int16, np.uint8, np.bool_, np.complex64)
SPECIALS = (0.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30)


@st.composite
def arrays(draw, shapes):
    """An array of one of ``shapes`` and of any dtype, with a few special values sprinkled in."""
    shape = draw(st.sampled_from(shapes))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from((1e-3, 1.0, 1e3, 1e20)))
    a = rng.standard_normal(shape) * scale
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 3)))):
        a.flat[int(rng.integers(a.size))] = draw(st.sampled_from(SPECIALS))
    with np.errstate(all="ignore"):
        return a.astype(dtype)


VALID_SPACINGS = (1.0, (0.8, 0.3, 0.3), 0.5, (2.0, 1.0, 1.0))
spacings = st.one_of(st.sampled_from(VALID_SPACINGS), st.sampled_from(VALID_SPACINGS),
                     st.sampled_from((0.0, -1.0, np.nan, np.inf, (1.0, 1.0), "1", None, 1e-9, 1e9)),
                     st.tuples(st.floats(-1, 3), st.floats(-1, 3), st.floats(-1, 3)))
materials = st.builds(lambda e, nu: (e, nu), st.sampled_from((1000.0, 1000.0, 300.0, 1e-6, 1e9, 0.0, -5.0, np.nan)),
                      st.sampled_from((0.45, 0.45, 0.3, 0.5, -1.0, 0.499)))


OUTCOMES: dict = {}


def _outcome(call, names):
    """Run ``call``; return the Result, or None after checking the error names an argument."""
    try:
        out = call()
        OUTCOMES["ok"] = OUTCOMES.get("ok", 0) + 1
        return out
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(n in message for n in names), f"{type(exc).__name__} names no argument: {message}"
        return None


def _finite(result):
    for name in ("displacement", "force"):
        a = getattr(result, name)
        if a is not None:
            assert np.all(np.isfinite(a)), f"{name} is not finite"


@SETTINGS
@given(u=arrays([(8, 8, 8, 3), (8, 8, 8), (8, 8, 8, 2), (6, 9, 10, 3), (1, 8, 8, 3)]), spacing=spacings, mat=materials,
       reg=st.sampled_from(("auto", "lcurve", 0.0, 1e-3, -1.0, np.nan, True, "bogus")))
def test_reconstruct_forces(u, spacing, mat, reg):
    names = ("displacement", "spacing_um", "shape", "grid", "youngs_modulus_pa", "poisson_ratio", "regularization")
    u = u[..., :3] if u.ndim == 4 and u.shape[-1] > 3 else u

    def call():
        grid = tfm.Grid(u.shape[:3] if u.ndim >= 3 else u.shape, spacing)
        return tfm.reconstruct_forces(u, grid, tfm.LinearElastic(*mat), regularization=reg)

    res = _outcome(call, names)
    if res is not None:
        _finite(res)


@SETTINGS
@given(u=arrays([(16, 16, 2), (16, 16, 3), (16, 16), (12, 20, 2)]), spacing=spacings, mat=materials,
       thickness=st.sampled_from((None, 10.0, 0.0, -3.0, np.nan)), reg=st.sampled_from(("auto", "bayesian", 1e-4, -1.0)))
def test_reconstruct_tractions(u, spacing, mat, thickness, reg):
    names = ("displacement", "spacing_um", "shape", "grid", "youngs_modulus_pa", "poisson_ratio", "thickness_um",
             "regularization")

    def call():
        grid = tfm.Grid(u.shape[:2], spacing if np.ndim(spacing) == 0 or len(spacing) != 3 else spacing[1:])
        return tfm.reconstruct_tractions(u, grid, tfm.LinearElastic(*mat), thickness_um=thickness, regularization=reg)

    res = _outcome(call, names)
    if res is not None:
        _finite(res)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ref=arrays([(12, 12, 12), (12, 12, 11)]), spacing=spacings, same=st.booleans(),
       windows=st.sampled_from(((8,), 8, (4, 4), (3,), ("a",), (16,), ())))
def test_measure_displacement(ref, spacing, same, windows):
    dfm = ref if same else np.roll(ref, 1, axis=2)
    names = ("reference", "deformed", "spacing_um", "grid", "window", "shape", "correlate")
    res = _outcome(lambda: tfm.measure_displacement(ref, dfm, spacing, windows=windows, drift=None), names)
    if res is not None:
        _finite(res)


@SETTINGS
@given(vol=arrays([(10, 12, 12), (10, 12), (1, 12, 12)]), spacing=spacings,
       dilate=st.sampled_from((0.0, 1.0, -1.0, np.nan)))
def test_cell_mask(vol, spacing, dilate):
    names = ("cell volume", "spacing_um", "grid", "dilate_um", "threshold", "cell mask", "volume")
    mask = _outcome(lambda: tfm.segment.cell_mask(vol, spacing, dilate_um=dilate), names)
    if mask is not None:
        assert mask.dtype == bool and mask.shape == vol.shape and 0 < mask.mean() <= 0.9


@SETTINGS
@given(shape=st.sampled_from(((8, 8, 8), (8.5, 8, 8), (0, 4, 4), (4, 4), (4,), ("a", 2, 2), (-1, 3, 3))),
       spacing=spacings, origin=st.sampled_from((None, (0, 0, 0), (np.nan, 0, 0), (1, 2))))
def test_grid(shape, spacing, origin):
    grid = _outcome(lambda: tfm.Grid(shape, spacing, origin), ("shape", "spacing_um", "origin_um"))
    if grid is not None:
        assert all(np.isfinite(grid.spacing_um)) and min(grid.spacing_um) > 0 and min(grid.shape) >= 1


def test_the_fuzzing_reached_the_computations():
    """Some generated calls were valid and ran to a checked, finite result (the fuzz tests
    above run first in this module)."""
    assert OUTCOMES.get("ok", 0) >= 10, OUTCOMES
