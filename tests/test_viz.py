"""3D views and slice figures render offscreen into non-trivial images."""

import numpy as np
import pytest

import tfm
from tfm import io

pv = pytest.importorskip("pyvista")


@pytest.fixture(scope="module")
def result():
    g = tfm.Grid((20, 24, 24), 1.0)
    gel = tfm.LinearElastic(1000.0, 0.45)
    sol = tfm.analytic.EshelbySphere(4.0, -0.05, g.center_um(), gel)
    u = np.asarray(sol.sample(g))
    f = -np.asarray(tfm.fields.navier(u, g, gel))
    return tfm.Result(g, displacement=u, force=f), g, sol


def _image_stats(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    return img.shape, float(img.std()), len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))


def test_render_png_is_not_blank(result, tmp_path):
    from tfm import viz

    res, g, sol = result
    d = np.linalg.norm(g.coordinates_um() - np.asarray(g.center_um()), axis=-1)
    cell = (d < 4.0).astype(np.float32)
    beads = (np.random.default_rng(0).random(g.shape) > 0.99).astype(np.float32)
    out = viz.render_png(res, tmp_path / "view.png", cell=cell, beads=(beads, g.spacing_um), window_size=(240, 200))
    shape, std, colours = _image_stats(out)
    assert shape[:2] == (200, 240)
    assert std > 0.02 and colours > 50  # arrows, colour map and surface: not a blank frame
    empty = viz.render_png(tfm.Result(g, displacement=np.zeros_like(res.displacement)), tmp_path / "empty.png", window_size=(240, 200))
    assert _image_stats(empty)[2] < colours  # the field adds content


def test_slices_and_cli_view(result, tmp_path, capsys):
    res, g, _ = result
    io.write_result(tmp_path / "r.h5", res)
    io.write_volume(tmp_path / "cell.tif", (np.linalg.norm(g.coordinates_um() - np.asarray(g.center_um()), axis=-1) < 4).astype(np.uint8) * 200, g.spacing_um)
    from tfm import cli

    beads = (np.random.default_rng(2).random(g.shape) > 0.98).astype(np.uint8) * 255
    io.write_volume(tmp_path / "beads.tif", beads, g.spacing_um)
    rc = cli.main(["view", str(tmp_path / "r.h5"), "--cell", str(tmp_path / "cell.tif"), "--beads", str(tmp_path / "beads.tif"),
                   "--slices", str(tmp_path / "s.png")])
    assert rc == 0, capsys.readouterr().err
    assert _image_stats(tmp_path / "r.png")[2] > 50
    assert _image_stats(tmp_path / "s.png")[1] > 0.02
    assert cli.main(["view", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err


def test_image_volumes_sit_at_the_image_origin_not_the_result_grid_origin():
    """A DVC result's grid starts at the first window centre; a cell image given as
    (volume, spacing) must stay where the image is (first voxel at 0 µm)."""
    from tfm import viz

    g = tfm.Grid((6, 6, 6), 2.0, origin_um=(8.0, 8.0, 8.0))  # like DVC window centres
    res = tfm.Result(g, displacement=np.zeros(g.shape + (3,), np.float32))
    cell = np.zeros((20, 20, 20), np.float32)
    cell[4:8, 4:8, 4:8] = 1.0  # voxels 4-7 of a 1-µm image: 4-7 µm
    surf = viz._volume_image((cell, (1.0, 1.0, 1.0)), res, "cell").contour([0.5], scalars="cell")
    lo, hi = np.array(surf.bounds).reshape(3, 2).T
    np.testing.assert_allclose(lo, 3.5, atol=0.01)
    np.testing.assert_allclose(hi, 7.5, atol=0.01)
    on_grid = viz._volume_image(np.ones(g.shape), res, "cell")
    np.testing.assert_allclose(on_grid.origin, (8.0, 8.0, 8.0))
    with pytest.raises(ValueError, match="not on the result's grid"):
        viz._volume_image(cell, res, "cell")


def test_displacement_decay_follows_the_closed_form_law():
    """Outside a contracting Eshelby sphere |u| = C / r^2 and u points at the centre:
    the binned profile must reproduce both from the voxel mask alone."""
    from tfm import segment

    g = tfm.Grid((40, 40, 40), 1.0)
    a = 6.0
    sol = tfm.analytic.EshelbySphere(a, -0.05, g.center_um(), tfm.LinearElastic(1000.0, 0.45))
    u = np.asarray(sol.sample(g))
    r = np.linalg.norm(g.coordinates_um() - np.asarray(g.center_um()), axis=-1)
    res = tfm.Result(g, displacement=u)
    decay = segment.displacement_decay(res, r <= a, g.spacing_um, bins_um=(0, 2, 4, 6, 8, 10, 12))
    c = float(np.median((np.linalg.norm(u, axis=-1) * r**2)[r > a + 1]))
    rows = decay["bins"]
    assert len(rows) == 6
    for row in rows:
        lo, hi = row["distance_um"]
        assert row["fraction_toward_cell"] == 1.0
        expected = c / (a + 0.5 * (lo + hi)) ** 2
        assert abs(row["median_u_um"] / expected - 1) < 0.25, (row, expected)
    med = [row["median_u_um"] for row in rows]
    assert all(m1 > m2 for m1, m2 in zip(med, med[1:]))
    with pytest.raises(ValueError, match="mask"):
        segment.displacement_decay(res, np.zeros((4, 4), bool), g.spacing_um)
    with pytest.raises(ValueError, match="outside the mask's image"):  # a mask of a smaller image
        segment.displacement_decay(res, (r <= a)[:20], g.spacing_um)
    with pytest.raises(ValueError, match="bins_um"):
        segment.displacement_decay(res, r <= a, g.spacing_um, bins_um=(4, 2))
    with pytest.raises(ValueError, match="spacing_um"):
        segment.displacement_decay(res, r <= a, 0.0)


def test_bead_pair_and_decay_figures(result, tmp_path):
    from tfm import segment, viz

    res, g, _ = result
    rng = np.random.default_rng(1)
    ref = (rng.random(g.shape) > 0.98).astype(np.float32)
    cell = np.linalg.norm(g.coordinates_um() - np.asarray(g.center_um()), axis=-1) < 4.0
    out = viz.bead_pair_figure(ref, ref, g.spacing_um, res, tmp_path / "beads.png", mask=cell, slab_um=4.0)
    shape, std, colours = _image_stats(out)
    assert std > 0.05 and colours > 50
    decay = segment.displacement_decay(res, cell, g.spacing_um, bins_um=(0, 2, 4, 6, 8))
    assert _image_stats(viz.decay_figure(decay, tmp_path / "decay.png"))[2] > 20
    with pytest.raises(ValueError, match="reference and deformed"):
        viz.bead_pair_figure(ref, ref[1:], g.spacing_um, res, tmp_path / "x.png")
    with pytest.raises(ValueError, match="mask"):
        viz.bead_pair_figure(ref, ref, g.spacing_um, res, tmp_path / "x.png", mask=cell[1:])
    assert not (tmp_path / "x.png").exists()


def test_crop_around_centres_on_the_mask_and_stays_inside():
    from tfm import segment

    mask = np.zeros((20, 30, 40), bool)
    mask[2:5, 10:13, 30:39] = True  # centroid (3, 11, 34)
    sl = segment.crop_around(mask, (8, 10, 50))
    assert sl == (slice(0, 8), slice(6, 16), slice(0, 40))  # z shifted inside, x clipped to the volume
    with pytest.raises(ValueError, match="size must give 3"):
        segment.crop_around(mask, (8, 10))
    with pytest.raises(ValueError, match="empty"):
        segment.crop_around(np.zeros((4, 4, 4), bool), (2, 2, 2))


def test_force_planes_figure_takes_results_on_different_grids(result, tmp_path):
    """The fine-grid force beside a coarser one (the DVC grid's, FTTC's): each is cut through
    the cell on its own grid."""
    from tfm import viz

    res, g, sol = result
    coarse = tfm.Grid((5, 6, 6), 4.0, (0.0, 2.0, 2.0))
    other = tfm.Result(coarse, force=np.asarray(res.force)[::4, 2::4, 2::4][:5, :6, :6])
    mask = np.linalg.norm(g.coordinates_um() - np.asarray(g.center_um()), axis=-1) < 4.0
    out = viz.force_planes_figure({"fine": res, "coarse": other}, tmp_path / "f.png", mask=mask, spacing_um=1.0)
    shape, std, colours = _image_stats(out)
    assert std > 0.02 and colours > 50
