"""Time series (tfm.series, tfm series) and batches on Dask (tfm.batch, tfm batch):
a contractility ramp recovered frame by frame, resumption after a kill, the files, and a
manifest run on a LocalCluster of two workers equal to the pairs run alone."""

import csv
import json
import warnings

import h5py
import numpy as np
import pytest

import tfm
from tfm import batch, series
from tfm.cli import main
from tfm.synth import timeseries

GRID = tfm.Grid((48, 48, 48), 1.0)
GEL = tfm.LinearElastic(1000.0, 0.45)
RADIUS = 6.0
RAMP = (-0.02, -0.04, -0.06, -0.08, -0.10)  # the sphere's eigenstrain per frame: a contractility ramp


def _sphere_series(grid=GRID, ramp=RAMP, seed=0):
    """A relaxed reference and a frame per eigenstrain of a contracting sphere (the same
    beads throughout, fresh camera noise in every frame; tfm.synth.timeseries), the cell
    mask and the true contractility (the sphere's total inward force) per frame."""
    s = timeseries.contracting_sphere(grid, RADIUS, ramp, GEL, seed=seed)
    return s["reference"], s["frames"], s["mask"], s["truth_pn"]


@pytest.fixture(scope="module")
def sphere_series():
    return _sphere_series()


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_series_recovers_a_contractility_ramp_in_both_modes(sphere_series, tmp_path):
    ref, frames, mask, truth = sphere_series
    out = {}
    for mode in ("reference", "incremental"):
        s = _quiet(series.reconstruct_series, ref, frames, GRID, GEL, mask=mask, mode=mode, force_grid="fine",
                   out=tmp_path / f"{mode}.h5", times_s=np.arange(5) * 30.0)
        ratio = s.column("contractility_pn") / truth
        assert np.all(np.abs(ratio - 1) < 0.12), (mode, ratio)  # measured 0.93-1.04 here
        assert np.all(np.diff(s.column("contractility_pn")) > 0), mode  # monotone, as the truth
        assert list(s.column("warm_start")) == [0, 1, 1, 1, 1]
        assert np.all(s.column("net_force_over_total") < 0.05)
        out[mode] = s
    # the two modes measure the same cell: accumulated increments agree with direct frames
    rel = out["incremental"].column("contractility_pn") / out["reference"].column("contractility_pn")
    assert np.all(np.abs(rel - 1) < 0.1), rel


def test_series_file_table_and_figure(sphere_series, tmp_path):
    ref, frames, mask, truth = sphere_series
    path = tmp_path / "s.h5"
    s = _quiet(series.reconstruct_series, ref, frames[:3], GRID, GEL, mask=mask, out=path, times_s=[0.0, 60.0, 120.0])
    assert s.path == path and not series.parts_dir(path).exists()  # the parts go once the series is written
    back = series.read_series(path)
    assert [r["time_s"] for r in back.table] == [0.0, 60.0, 120.0]
    with h5py.File(path) as h:
        assert h["displacement"].shape == (3, *s.grid.shape, 3) and h["displacement"].chunks[0] == 1
        assert h["force"].attrs["axes"] == "t,z,y,x"
    frame = back.frame(2)
    assert frame.contractility() == pytest.approx(s.table[2]["contractility_pn"], rel=1e-5)
    rows = list(csv.DictReader(open(path.with_suffix(".csv"))))
    assert [float(r["contractility_pn"]) for r in rows] == pytest.approx(list(s.column("contractility_pn")), rel=1e-5)
    assert set(rows[0]) == set(series.COLUMNS)
    assert path.with_suffix(".png").stat().st_size > 10_000


class _Killed(Exception):
    pass


class _DiesAt(list):
    """The frames, as a list that fails when frame ``at`` is read (a killed run)."""

    def __init__(self, frames, at):
        super().__init__(frames)
        self.at = at

    def __getitem__(self, t):
        if t == self.at:
            raise _Killed
        return list.__getitem__(self, t)


def test_killed_series_resumes_at_the_first_unfinished_frame(sphere_series, tmp_path, monkeypatch):
    ref, frames, mask, _ = sphere_series
    path = tmp_path / "s.h5"
    with pytest.raises(_Killed):
        _quiet(series.reconstruct_series, ref, _DiesAt(frames[:4], 2), GRID, GEL, mask=mask, out=path)
    parts = sorted(p.name for p in series.parts_dir(path).glob("frame_*.h5"))
    assert parts == ["frame_00000.h5", "frame_00001.h5"] and not path.exists()
    calls = []
    real = tfm.api.reconstruct
    monkeypatch.setattr(tfm.api, "reconstruct", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = _quiet(series.reconstruct_series, ref, list(frames[:4]), GRID, GEL, mask=mask, out=path)
    assert len(calls) == 2  # frames 2 and 3 only
    monkeypatch.setattr(tfm.api, "reconstruct", real)
    whole = _quiet(series.reconstruct_series, ref, list(frames[:4]), GRID, GEL, mask=mask)
    for t in range(4):  # the resumed series is the uninterrupted one
        np.testing.assert_array_equal(resumed.frame(t).force, whole.frame(t).force)
    # changed inputs are not taken from the parts of another run
    with pytest.raises(_Killed):
        _quiet(series.reconstruct_series, ref, _DiesAt(frames[:3], 2), GRID, GEL, mask=mask, out=tmp_path / "t.h5")
    other = _quiet(series.reconstruct_series, ref, [frames[3], frames[4], frames[2]], GRID, GEL, mask=mask,
                   out=tmp_path / "t.h5")
    assert other.table[0]["contractility_pn"] == pytest.approx(whole.table[3]["contractility_pn"], rel=0.05)


def test_series_frames_as_dask_tasks_equal_the_frames_run_one_after_another(sphere_series, tmp_path):
    from dask.distributed import Client, LocalCluster

    ref, frames, mask, _ = sphere_series
    alone = _quiet(series.reconstruct_series, ref, frames[:3], GRID, GEL, mask=mask, reuse=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tasks = _quiet(series.reconstruct_series, ref, frames[:3], GRID, GEL, mask=mask, client=client,
                       out=tmp_path / "d.h5")
    np.testing.assert_allclose(tasks.column("contractility_pn"), alone.column("contractility_pn"), rtol=1e-5)
    assert not any(tasks.column("warm_start"))
    with pytest.raises(ValueError, match="incremental"):
        series.reconstruct_series(ref, frames[:3], GRID, GEL, mode="incremental", client=object())


def test_series_with_the_learned_path(sphere_series):
    ref, frames, mask, truth = sphere_series
    s = _quiet(series.reconstruct_series, ref, frames[::2], GRID, GEL, method="dl", mask=mask)
    assert len(s) == 3 and not any(s.column("warm_start")) and s.frame(0).info["model"]
    c = s.column("contractility_pn")
    assert np.all(np.diff(c) > 0) and np.all(c > 0)  # rises with the load (not proportional: docs/learned.md)
    assert s.frame(2).grid == s.grid


def test_series_refuses_bad_arguments(sphere_series):
    ref, frames, mask, _ = sphere_series
    with pytest.raises(ValueError, match="mode"):
        series.reconstruct_series(ref, frames, GRID, GEL, mode="sliding")
    with pytest.raises(ValueError, match="incremental.*classical"):
        series.reconstruct_series(ref, frames, GRID, GEL, mode="incremental", method="dl")
    with pytest.raises(ValueError, match="times_s"):
        series.reconstruct_series(ref, frames, GRID, GEL, times_s=[0, 1])
    with pytest.raises(ValueError, match="frames"):
        series.reconstruct_series(ref, frames[0], GRID, GEL)
    with pytest.raises(ValueError, match="mask"):
        series.reconstruct_series(ref, frames[:1], GRID, GEL, mask=mask[:10])
    with pytest.raises(ValueError, match="frame 1 has shape"):
        series.reconstruct_series(ref, [frames[0], frames[1][:40]], GRID, GEL)


def test_series_command_on_a_4d_stack_and_a_list_of_files(sphere_series, tmp_path, capsys):
    ref, frames, mask, truth = sphere_series
    tfm.io.write_volume(tmp_path / "ref.tif", ref, 1.0)
    tfm.io.write_frames(tmp_path / "frames.tif", frames[:3], 1.0)
    tfm.io.write_volume(tmp_path / "cell.tif", mask.astype(np.float32), 1.0)
    code = main(["series", str(tmp_path / "ref.tif"), str(tmp_path / "frames.tif"), "-o", str(tmp_path / "s.h5"),
                 "--youngs-modulus-pa", "1000", "--cell", str(tmp_path / "cell.tif"), "--force-grid", "fine",
                 "--interval-s", "60", "--quiet"])
    assert code == 0
    table = series.read_series(tmp_path / "s.h5").table
    assert [r["time_s"] for r in table] == [0.0, 60.0, 120.0]
    assert table[2]["contractility_pn"] / truth[2] == pytest.approx(1.0, abs=0.12)
    for t in range(2):
        tfm.io.write_volume(tmp_path / f"f{t}.tif", frames[t], 1.0)
    code = main(["series", str(tmp_path / "ref.tif"), str(tmp_path / "f0.tif"), str(tmp_path / "f1.tif"), "-o",
                 str(tmp_path / "list.h5"), "--youngs-modulus-pa", "1000", "--cell", str(tmp_path / "cell.tif"),
                 "--force-grid", "fine", "--quiet"])
    assert code == 0
    listed = series.read_series(tmp_path / "list.h5").table
    assert listed[1]["contractility_pn"] == pytest.approx(table[1]["contractility_pn"], rel=1e-6)
    code = main(["series", str(tmp_path / "ref.tif"), str(tmp_path / "f0.tif"), "-o", str(tmp_path / "x.h5"),
                 "--youngs-modulus-pa", "1000", "--cells", str(tmp_path / "cell.tif"), str(tmp_path / "cell.tif")])
    assert code == 2 and "--cells gives 2 stacks for 1 frames" in capsys.readouterr().err


# ------------------------------------------------------------------------------ batch
@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Six small pairs written as TIFF files and a manifest of them plus one bad row."""
    folder = tmp_path_factory.mktemp("pairs")
    grid = tfm.Grid((40, 40, 40), 1.0)
    lines = ["reference,deformed,cell,name,youngs_modulus_pa,force_grid"]
    for i in range(3):
        ref, frames, mask, _ = _sphere_series(grid, ramp=(-0.06, -0.10), seed=10 + i)
        tfm.io.write_volume(folder / f"ref{i}.tif", ref, 1.0)
        tfm.io.write_volume(folder / f"cell{i}.tif", mask.astype(np.float32), 1.0)
        for j, frame in enumerate(frames):
            tfm.io.write_volume(folder / f"def{i}{j}.tif", frame, 1.0)
            lines.append(f"ref{i}.tif,def{i}{j}.tif,cell{i}.tif,p{i}{j},1000,{'fine' if j else 'dvc'}")
    lines.insert(3, "ref0.tif,missing.tif,,bad,1000,")  # row 3 of the data (line 4)
    tfm.io.write_volume(folder / "small.tif", np.zeros((8, 8, 8), np.uint16), 1.0)
    lines.append("ref0.tif,small.tif,,odd,1000,")  # row 8: valid as a row, fails where it runs
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_batch_on_a_local_cluster_reports_the_bad_row_skips_done_rows_and_equals_single_runs(pairs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", str(pairs / "manifest.csv"), "-o", str(out), "--workers", "2", "--quiet"])
    text = capsys.readouterr().out
    assert code == 1 and "row 3 (line 4" in text and "missing.tif" in text
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["done", "done", "invalid", "done", "done", "done", "done", "failed"]
    assert rows[2]["row"] == "3" and "file not found" in rows[2]["error"]
    assert "differ in shape" in rows[7]["error"] and "row 8 (odd) failed" in text
    # each result is what the pair gives alone
    for r in rows:
        if r["status"] != "done":
            continue
        i, j = r["name"][1], r["name"][2]
        ref, grid = tfm.io.read_volume(pairs / f"ref{i}.tif")
        dfm, _ = tfm.io.read_volume(pairs / f"def{i}{j}.tif")
        cell, _ = tfm.io.read_volume(pairs / f"cell{i}.tif")
        alone = _quiet(tfm.reconstruct, ref, dfm, grid, GEL, mask=tfm.segment.cell_mask(cell, grid),
                       force_grid="fine" if j == "1" else "dvc")
        got = tfm.io.read_result(out / f"{r['name']}.h5")
        np.testing.assert_allclose(got.force, alone.force, rtol=1e-5, atol=1e-6 * np.abs(alone.force).max())
        assert float(r["contractility_pn"]) == pytest.approx(alone.contractility(), rel=1e-5)
    # a rerun skips the rows done; a lost result is made again
    (out / "p11.h5").unlink()
    code = main(["batch", str(pairs / "manifest.csv"), "-o", str(out), "--workers", "1", "--quiet"])
    assert code == 1
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["skipped", "skipped", "invalid", "skipped", "done", "skipped", "skipped",
                                           "failed"]


def test_manifest_rows_are_checked_before_any_work(tmp_path):
    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"")
    m = tmp_path / "m.csv"
    m.write_text("reference,deformed,name,youngs_modulus_pa,poisson_ratio,material,method,spacing_um\n"
                 "a.tif,b.tif,x,1000,0.45,linear,classical,1\n"
                 "a.tif,b.tif,y,-5,,,,\n"
                 "a.tif,b.tif,z,1000,0.6,,,\n"
                 "a.tif,b.tif,w,1000,,fiber,dl,\n"
                 "a.tif,b.tif,x,1000,,,,\n"
                 "a.tif,b.tif,v,,,,,0.5 0.2\n"
                 "a.tif,b.tif,../u,1000,,,,\n")
    rows, errors = batch.read_manifest(m)
    assert [r.name for r in rows] == ["x"] and rows[0].spacing_um == (1.0, 1.0, 1.0)
    msgs = dict(errors)
    assert set(msgs) == {2, 3, 4, 5, 6, 7}
    assert "youngs_modulus_pa" in msgs[2] and "poisson_ratio" in msgs[3] and "fiber needs method classical" in msgs[4]
    assert "row 1" in msgs[5] and "spacing_um" in msgs[6] and "plain file name" in msgs[7]
    rows, errors = batch.read_manifest(m, defaults={"youngs_modulus_pa": 500})
    assert [r.youngs_modulus_pa for r in rows if r.name == "v"] == [] and 6 in dict(errors)  # spacing still bad
    (tmp_path / "bad.csv").write_text("reference,deformed,colour\na.tif,b.tif,red\n")
    with pytest.raises(ValueError, match="unknown column.*colour"):
        batch.read_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("reference\na.tif\n")
    with pytest.raises(ValueError, match="lacks the column.*deformed"):
        batch.read_manifest(tmp_path / "bad.csv")
    assert json.loads(json.dumps(batch.SUMMARY))  # the summary's columns are plain names


def _run_until(cmd, ready, sig, timeout=120):
    """Start ``cmd``, wait until ``ready()``, then send it ``sig``; returns its exit status."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # SIGINT as from a terminal: a shell's background job (nohup CMD &) starts with SIGINT
    # ignored, which the child would inherit, and then it never hears the interrupt
    proc = subprocess.Popen([sys.executable, "-m", "tfm.cli", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not ready() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def test_series_killed_outright_resumes_without_recomputing_finished_frames(sphere_series, tmp_path, monkeypatch):
    import signal

    ref, frames, mask, _ = sphere_series
    tfm.io.write_volume(tmp_path / "ref.tif", ref, 1.0)
    names = []
    for t in range(5):
        tfm.io.write_volume(tmp_path / f"f{t}.tif", frames[t], 1.0)
        names.append(str(tmp_path / f"f{t}.tif"))
    out = tmp_path / "s.h5"
    parts = series.parts_dir(out)
    cmd = ["series", str(tmp_path / "ref.tif"), *names, "-o", str(out), "--youngs-modulus-pa", "1000", "--quiet"]
    code = _run_until(cmd, lambda: len(list(parts.glob("frame_*.h5"))) >= 2, signal.SIGKILL)
    assert code == -signal.SIGKILL and not out.exists()
    done = len(list(parts.glob("frame_*.h5")))
    calls = []
    real = tfm.api.reconstruct
    monkeypatch.setattr(tfm.api, "reconstruct", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(cmd) == 0
    assert len(calls) == 5 - done and 2 <= done < 5
    assert len(series.read_series(out)) == 5 and not parts.exists()


def test_batch_interrupted_resumes_without_recomputing_finished_rows(pairs, tmp_path):
    import signal

    out = tmp_path / "out"
    cmd = ["batch", str(pairs / "manifest.csv"), "-o", str(out), "--workers", "1", "--quiet"]
    code = _run_until(cmd, lambda: len(list(out.glob("p*.h5"))) >= 1, signal.SIGINT)
    assert code == 130  # interrupted, as the command says
    done = {p.stem for p in out.glob("p*.h5")}
    assert main(cmd) == 1  # the bad rows are still bad
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["name"] for r in rows if r["status"] == "skipped"} == done
    assert {r["status"] for r in rows if r["name"] not in done} <= {"done", "invalid", "failed"}
