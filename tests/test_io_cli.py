"""Files and the command line: voxel sizes from TIFF metadata, HDF5 round trips,
atomic writes, VTK axis order, and `tfm forces` end to end."""

import json

import h5py
import numpy as np
import pytest
import tifffile

import tfm
from tfm import atomic, cli, io


def test_imagej_tiff_round_trip_keeps_voxel_size(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (6, 10, 12), dtype=np.uint8)
    io.write_volume(tmp_path / "v.tif", vol, (0.8, 0.29286, 0.3))
    back, grid = io.read_volume(tmp_path / "v.tif")
    assert np.array_equal(back, vol)
    assert np.allclose(grid.spacing_um, (0.8, 0.29286, 0.3), rtol=1e-5)


def test_ome_tiff_voxel_size_with_units(tmp_path):
    vol = np.zeros((5, 8, 9), np.uint16)
    tifffile.imwrite(tmp_path / "v.ome.tif", vol, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1500.0, "PhysicalSizeZUnit": "nm",
                               "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    _, grid = io.read_volume(tmp_path / "v.ome.tif")
    assert np.allclose(grid.spacing_um, (1.5, 0.25, 0.25))


def test_missing_voxel_size_is_never_guessed(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 6, 6), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match="spacing_um"):
        io.read_volume(tmp_path / "plain.tif")
    vol, grid = io.read_volume(tmp_path / "plain.tif", spacing_um=(2, 1, 1))
    assert grid.spacing_um == (2.0, 1.0, 1.0) and vol.shape == (4, 6, 6)


@pytest.mark.parametrize("content, match", [(None, "not found"), (b"not a tiff", "cannot read")])
def test_unreadable_volume_files(tmp_path, content, match):
    p = tmp_path / "bad.tif"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        io.read_volume(p, spacing_um=1.0)


def test_multichannel_stack_needs_a_channel(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 2, 6, 6), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match="channel"):
        io.read_volume(tmp_path / "c.tif", spacing_um=1.0)
    vol, _ = io.read_volume(tmp_path / "c.tif", spacing_um=1.0, channel=1)
    assert vol.shape == (4, 6, 6)


def test_real_fmtrack_stack_has_no_voxel_size(shared_data):
    path = shared_data / "fmtrack_avic_3d" / "CytoD_Beads.tif"
    with pytest.raises(ValueError, match="spacing_um"):
        io.read_volume(path)
    vol, spacing = io.read_volume(path, spacing_um=(0.8, 0.29286, 0.29286))
    assert vol.shape == (176, 512, 512) and vol.dtype == np.uint8


def _small_result():
    g = tfm.Grid((6, 7, 8), spacing_um=(2.0, 1.0, 0.5), origin_um=(1.0, 2.0, 3.0))
    rng = np.random.default_rng(1)
    return tfm.Result(g, rng.standard_normal((6, 7, 8, 3)).astype(np.float32),
                      rng.standard_normal((6, 7, 8, 3)).astype(np.float32), {"alpha": 1e-3, "note": "x"})


def test_result_hdf5_round_trip_with_units_and_provenance(tmp_path):
    res = _small_result()
    io.write_result(tmp_path / "r.h5", res, provenance={"input": "a.npy"})
    back = io.read_result(tmp_path / "r.h5")
    assert back.grid == res.grid
    assert np.array_equal(back.displacement, res.displacement) and np.array_equal(back.force, res.force)
    assert back.info["alpha"] == 1e-3 and back.info["provenance"] == {"input": "a.npy"}
    with h5py.File(tmp_path / "r.h5") as h:
        assert h["force"].attrs["units"] == "pN/um^3" and h["displacement"].attrs["units"] == "um"
        assert h["displacement"].attrs["components"] == "z,y,x"
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]  # no temporary left behind


def test_result_file_is_chunked_float32_with_an_optional_preview(tmp_path):
    """Fields are stored float32 in compressed 64³ chunks (a float64 field is narrowed);
    a preview copy holds every k-th point on the grid through those points."""
    g = tfm.Grid((70, 9, 130), spacing_um=(0.8, 0.3, 0.3), origin_um=(1.0, 2.0, 3.0))
    x = g.coordinates_um()
    res = tfm.Result(g, (0.1 * x).astype(np.float64), np.sin(x).astype(np.float32))
    io.write_result(tmp_path / "r.h5", res, preview_factor=(2, 4, 8))
    with h5py.File(tmp_path / "r.h5") as h:
        assert h["displacement"].dtype == np.float32 and h["displacement"].chunks == (64, 9, 64, 3)
        assert h["force"].compression == "gzip"
    small = io.read_result(tmp_path / "r.h5", preview=True)
    assert small.grid.shape == (35, 3, 17) and small.grid.spacing_um == pytest.approx((1.6, 1.2, 2.4))
    assert small.grid.origin_um == g.origin_um
    # the preview's values are the full field's at the preview grid's own points
    np.testing.assert_allclose(small.displacement, 0.1 * small.grid.coordinates_um(), rtol=1e-5, atol=1e-6)
    assert small.info["preview_factor"] == [2, 4, 8] and small.info["preview_of"] == [70, 9, 130]
    io.write_result(tmp_path / "n.h5", res)
    with pytest.raises(ValueError, match="no preview"):
        io.read_result(tmp_path / "n.h5", preview=True)
    with pytest.raises(ValueError, match="factor"):
        io.write_result(tmp_path / "b.h5", res, preview_factor=0)
    assert not (tmp_path / "b.h5").exists()


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_reading_non_results_fails_clearly(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["x"] = 1
    with pytest.raises(ValueError, match="not a tfm result"):
        io.read_result(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError):
        io.read_result(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="no dataset"):
        io.read_displacement(tmp_path / "other.h5")


def test_vtk_export_orders_axes_for_paraview(tmp_path):
    res = _small_result()
    io.write_vtk(tmp_path / "r.vti", res)
    import pyvista as pv

    img = pv.read(tmp_path / "r.vti")
    assert tuple(img.dimensions) == (8, 7, 6) and np.allclose(img.spacing, (0.5, 1.0, 2.0))
    # Point (k, j, i) = (2, 3, 4): VTK index i + 8 * (j + 7 * k), vector in (x, y, z).
    p = img.find_closest_point(np.array(res.grid.coordinates_um()[2, 3, 4][::-1]))
    assert p == 4 + 8 * (3 + 7 * 2)
    assert np.allclose(img.point_data["force_pN_per_um3"][p], res.force[2, 3, 4][::-1])
    with pytest.raises(ValueError, match=".vti"):
        io.write_vtk(tmp_path / "r.vtk", res)


def test_cli_forces_end_to_end(tmp_path, capsys):
    g = tfm.Grid((24, 24, 24), 1.0)
    mat = tfm.LinearElastic(500.0, 0.45)
    sol = tfm.analytic.EshelbySphere(3.0, -0.05, g.center_um(), mat)
    np.save(tmp_path / "u.npy", np.asarray(sol.sample(g), np.float32))
    rc = cli.main(["forces", str(tmp_path / "u.npy"), "--spacing-um", "1", "1", "1", "--youngs-modulus-pa", "500",
                   "-o", str(tmp_path / "f.h5"), "--vtk", str(tmp_path / "f.vti")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    res = io.read_result(tmp_path / "f.h5")
    assert summary["method"] == "inverse" and summary["alpha_rule"] == "discrepancy" and summary["noise_estimated"]
    assert res.info["provenance"]["command"] == "tfm forces" and res.info["youngs_modulus_pa"] == 500.0
    assert res.contractility() > 0 and (tmp_path / "f.vti").is_file()
    # The result file is itself a valid input (e.g. a DVC result re-run with another modulus).
    assert cli.main(["forces", str(tmp_path / "f.h5"), "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "g.h5"), "--quiet"]) == 0
    assert io.read_result(tmp_path / "g.h5").total_force() == pytest.approx(2 * res.total_force(), rel=1e-3)
    # FTTC on request; the inverse's options are refused with it, and FTTC's with the inverse.
    base = ["forces", str(tmp_path / "u.npy"), "--spacing-um", "1", "1", "1", "--youngs-modulus-pa", "500"]
    assert cli.main([*base, "--method", "fttc", "-o", str(tmp_path / "h.h5")]) == 0
    assert json.loads(capsys.readouterr().out.split("\nwrote")[0])["regularization_rule"] == "gcv"
    for extra, word in ((["--method", "fttc", "--noise-um", "0.01"], "--noise-um"), (["--pad", "zero"], "--pad"),
                        (["--regularization", "gcv"], "gcv"), (["--support-um", "2"], "--support-um")):
        assert cli.main([*base, *extra, "-o", str(tmp_path / "x.h5")]) == 2 and word in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--youngs-modulus-pa", "500"], "spacing_um"),
        (["--youngs-modulus-pa", "-5", "--spacing-um", "1", "1", "1"], "youngs_modulus_pa"),
        (["--youngs-modulus-pa", "500", "--poisson-ratio", "0.5", "--spacing-um", "1", "1", "1"], "poisson_ratio"),
        (["--youngs-modulus-pa", "500", "--spacing-um", "1", "0", "1"], "spacing_um"),
    ],
)
def test_cli_bad_input_exits_2_with_message(tmp_path, capsys, args, match):
    np.save(tmp_path / "u.npy", np.zeros((8, 8, 8, 3), np.float32))
    rc = cli.main(["forces", str(tmp_path / "u.npy"), "-o", str(tmp_path / "o.h5"), *args])
    assert rc == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_cli_help_is_usable(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["forces", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--youngs-modulus-pa" in out and "pN/µm³" in out and "examples:" in out


def test_cli_displacement_and_reconstruct_on_tiff_stacks(tmp_path, capsys):
    from tfm.synth import beads

    grid = tfm.Grid((32, 48, 48), (0.8, 0.3, 0.3))
    rng = np.random.default_rng(0)
    pos = beads.random_positions(grid, 0.01 / grid.voxel_volume_um3, rng, margin_um=2)
    shift = np.array([0.4, -0.15, 0.2])  # µm
    ref, dfm = beads.render_pair(grid, pos, lambda q: np.broadcast_to(shift, q.shape), psf_sigma_um=(1.0, 0.25, 0.25))
    io.write_volume(tmp_path / "ref.tif", ref, grid.spacing_um)
    io.write_volume(tmp_path / "def.tif", dfm, grid.spacing_um)
    rc = cli.main(["displacement", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--windows", "16", "--drift", "none",
                   "-o", str(tmp_path / "d.h5"), "--quiet"])
    assert rc == 0
    res = io.read_result(tmp_path / "d.h5")
    assert np.allclose(np.median(res.displacement.reshape(-1, 3), 0), shift, atol=0.02)  # µm, from the files' voxel size
    assert res.info["quality"].shape == res.grid.shape  # per-window maps survive the HDF5 round trip
    rc = cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--windows", "16",
                   "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "r.h5"), "--quiet"])
    assert rc == 0 and io.read_result(tmp_path / "r.h5").force is not None
    # Stacks without a voxel size and no --spacing-um: a clear error, nothing written.
    tifffile.imwrite(tmp_path / "plain.tif", ref, photometric="minisblack")
    rc = cli.main(["displacement", str(tmp_path / "plain.tif"), str(tmp_path / "plain.tif"), "-o", str(tmp_path / "x.h5")])
    assert rc == 2 and "spacing" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()


def test_2d_images_carry_their_pixel_size(tmp_path):
    img = np.random.default_rng(2).integers(0, 4000, (20, 30), dtype=np.uint16)
    io.write_image(tmp_path / "i.tif", img, (0.16, 0.2))
    back, grid = io.read_image(tmp_path / "i.tif")
    assert np.array_equal(back, img) and np.allclose(grid.spacing_um, (0.16, 0.2), rtol=1e-5)
    tifffile.imwrite(tmp_path / "ome.ome.tif", img, ome=True, metadata={"axes": "YX", "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.25})
    assert np.allclose(io.read_image(tmp_path / "ome.ome.tif")[1].spacing_um, (0.5, 0.25))
    tifffile.imwrite(tmp_path / "plain.tif", img, photometric="minisblack")
    with pytest.raises(ValueError, match="spacing_um"):
        io.read_image(tmp_path / "plain.tif")
    with pytest.raises(ValueError, match="2D image"):
        io.read_image(_stack(tmp_path), spacing_um=1.0)


def _stack(tmp_path):
    io.write_volume(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), (1, 1, 1))
    return tmp_path / "s.tif"


# ---------------------------------------------------------------------------- OME-Zarr
def test_ome_zarr_volume_round_trip_levels_and_channels(tmp_path):
    vol = np.random.default_rng(0).integers(0, 4000, (12, 32, 40)).astype(np.uint16)
    io.write_volume(tmp_path / "v.ome.zarr", vol, (0.8, 0.3, 0.25), levels=3)
    back, grid = io.read_volume(tmp_path / "v.ome.zarr")
    assert back.dtype == vol.dtype and np.array_equal(back, vol) and grid.spacing_um == (0.8, 0.3, 0.25)
    coarse, g1 = io.read_volume(tmp_path / "v.ome.zarr", level=1)
    assert coarse.shape == (12, 16, 20) and g1.spacing_um == pytest.approx((0.8, 0.6, 0.5))
    with pytest.raises(ValueError, match="level must be one of 0..2"):
        io.read_volume(tmp_path / "v.ome.zarr", level=3)
    with pytest.raises(ValueError, match="level applies to OME-Zarr"):
        io.write_volume(tmp_path / "v.tif", vol, 1.0) or io.read_volume(tmp_path / "v.tif", level=1)
    with pytest.raises(FileNotFoundError):
        io.read_volume(tmp_path / "absent.ome.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="no OME-Zarr image"):
        io.read_volume(tmp_path / "empty.zarr")


def test_ome_zarr_result_round_trip_keeps_fields_grid_info_and_reads_as_images(tmp_path):
    grid = tfm.Grid((8, 10, 12), (1.0, 0.5, 0.4), (2.0, 1.0, 3.0))
    rng = np.random.default_rng(1)
    u = rng.standard_normal((*grid.shape, 3)).astype(np.float32)
    res = tfm.Result(grid, u, 3 * u, info={"alpha": 0.5, "valid": rng.random(grid.shape) > 0.5, "dvc": {"q": np.ones(20)}})
    path = io.write_result(tmp_path / "r.ome.zarr", res, {"command": "test"})
    back = io.read_result(path)
    assert back.grid == grid and np.array_equal(back.displacement, u) and np.array_equal(back.force, 3 * u)
    assert np.array_equal(back.info["valid"], res.info["valid"]) and back.info["dvc"]["q"].shape == (20,)
    assert back.info["alpha"] == 0.5 and back.info["provenance"] == {"command": "test"}
    fx, g = io.read_volume(path / "force", channel=2)  # any OME-Zarr reader sees the components as channels
    assert np.array_equal(fx, 3 * u[..., 2]) and g.spacing_um == grid.spacing_um
    with pytest.raises(ValueError, match="preview"):
        io.write_result(tmp_path / "p.ome.zarr", res, preview_factor=2)


def test_reconstruct_command_reads_and_writes_ome_zarr_as_it_does_tiff(tmp_path):
    from tfm.synth import timeseries

    grid = tfm.Grid((48, 48, 48), 1.0)
    data = timeseries.contracting_sphere(grid, 6.0, [-0.1], tfm.LinearElastic(1000.0, 0.45), seed=4)
    for name, vol in (("ref", data["reference"]), ("def", data["frames"][0]), ("cell", data["mask"].astype(np.uint8) * 200)):
        io.write_volume(tmp_path / f"{name}.tif", vol, grid)
        io.write_volume(tmp_path / f"{name}.ome.zarr", vol, grid, levels=2)
    common = ["--youngs-modulus-pa", "1000", "--force-grid", "fine", "--quiet"]
    assert cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "-o", str(tmp_path / "t.h5"),
                 "--cell", str(tmp_path / "cell.tif"), *common]) == 0
    zarr_args = ["reconstruct", str(tmp_path / "ref.ome.zarr"), str(tmp_path / "def.ome.zarr"), "-o",
                 str(tmp_path / "z.ome.zarr"), "--cell", str(tmp_path / "cell.ome.zarr"), *common]
    assert cli.main(zarr_args) == 0
    assert cli.main(zarr_args) == 0  # a tfm result may be replaced by the next run
    a, b = io.read_result(tmp_path / "t.h5"), io.read_result(tmp_path / "z.ome.zarr")
    np.testing.assert_array_equal(a.force, b.force)
    assert b.contractility() > 0
    assert cli.main(["reconstruct", str(tmp_path / "ref.ome.zarr"), str(tmp_path / "def.ome.zarr"), "-o",
                 str(tmp_path / "ref.ome.zarr"), *common]) == 2  # an input is never overwritten
    assert cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "-o", str(tmp_path / "x.h5"),
                 "--level", "1", *common]) == 2
