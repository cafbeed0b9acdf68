"""The residual translation predict takes out of the network's field: a drift fitted wrongly
moves the whole far field, a cell's own field does not."""

import numpy as np

from tfm.grid import Grid
from tfm.nn import infer

LK = Grid((24, 32, 32), (1.6, 1.2, 1.2))


def _cell_field(amplitude_um=0.5):
    """A contraction toward the centre decaying as 1/r² (the far field of a force dipole's
    scale), with a little noise: what a cell does to the gel around it."""
    x = (np.indices(LK.shape).astype(float) - (np.asarray(LK.shape) / 2 - 0.5)[:, None, None, None])
    x = np.moveaxis(x, 0, -1) * np.asarray(LK.spacing_um)
    r = np.linalg.norm(x, axis=-1, keepdims=True) + 1.0
    noise = np.random.default_rng(0).normal(0, 0.005, x.shape)
    return (-amplitude_um * 25.0 * x / r**3 + noise).astype(np.float32)


def test_a_uniform_offset_is_found_and_a_cell_field_alone_is_left_alone():
    u = _cell_field()
    assert np.array_equal(infer.residual_translation(u, LK), np.zeros(3))
    offset = np.array([-0.18, 0.0, 0.0], np.float32)
    found = infer.residual_translation(u + offset, LK)
    np.testing.assert_allclose(found, offset, atol=0.01)
    # with the cell's mask the far half is measured from the cell, and the faces are left out
    cell = np.zeros(LK.shape, bool)
    cell[10:14, 14:18, 14:18] = True
    np.testing.assert_allclose(infer.residual_translation(u + offset, LK, cell, (4, 2, 2)), offset, atol=0.01)
    assert not infer.residual_translation(u, LK, cell, (4, 2, 2)).any()


def test_face_margins_grow_with_the_bead_image():
    rng = np.random.default_rng(1)
    from scipy import ndimage

    points = np.zeros((48, 64, 64), np.float32)
    points[tuple(rng.integers(0, s, 400) for s in points.shape)] = 1.0
    short = infer.face_margins(ndimage.gaussian_filter(points, (1.0, 1.0, 1.0), mode="wrap"))
    long = infer.face_margins(ndimage.gaussian_filter(points, (6.0, 1.0, 1.0), mode="wrap"))
    assert long[0] >= short[0] + 2 and long[1:] == short[1:], (short, long)
