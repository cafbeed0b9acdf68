"""The 2D stiffness CNN: loaders, preprocessing, splits, metrics, training, explanations, CLI."""

import json
import shutil

import jax
import numpy as np
import pytest
import tifffile
from flax import nnx

from tfm.learn import config as configs
from tfm.learn.optim import OptimConfig
from tfm.stiffness import baseline, data, explain, metrics, search, synth, train
from tfm.stiffness.model import NetConfig, StiffnessNet

TINY = NetConfig(widths=(8, 16, 32), dropout=0.0)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """96 synthetic 64-pixel cells from 6 donors, 4 % over-exposed."""
    out = tmp_path_factory.mktemp("cells")
    synth.generate(out, 96, size=64, seed=3, n_donors=6, rules=synth.MorphologyRules(overexposed_fraction=0.04),
                   progress=False)
    return out


@pytest.fixture(scope="module")
def trained(cells, tmp_path_factory):
    """A small network trained on the cells (both heads) for 12 epochs."""
    run = tmp_path_factory.mktemp("run")
    cfg = train.StiffnessConfig(csv=str(cells / "labels.csv"), size=64, net=TINY, epochs=12, batch_size=16,
                                optim=OptimConfig(learning_rate=3e-3, warmup_steps=5))
    summary = train.train(cfg, run, progress=False)
    return run, cfg, summary


def test_generator_follows_its_rules():
    rng = np.random.default_rng(0)
    soft = [synth.render_cell(rng, 300.0)[2] for _ in range(12)]
    stiff = [synth.render_cell(rng, 15000.0)[2] for _ in range(12)]
    assert np.mean([p["area_px"] for p in stiff]) > 2 * np.mean([p["area_px"] for p in soft])
    assert np.mean([p["aspect"] for p in stiff]) > np.mean([p["aspect"] for p in soft]) + 0.5
    img, mask, _ = synth.render_cell(rng, 1000.0, size=96)
    assert img.dtype == np.uint16 and img.shape == mask.shape == (96, 96)
    assert img[mask].mean() < np.median(img[~mask])  # a dark cell body on a brighter background
    over, _, _ = synth.render_cell(rng, 1000.0, overexposed=True)
    assert data.saturated_fraction(over) > 0.01 and data.saturated_fraction(img) == 0
    with pytest.raises(ValueError, match="stiffness_pa"):
        synth.render_cell(rng, -1.0)


def _csv(tmp_path, text):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def test_table_errors_name_the_row(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((32, 32), 100, np.uint16))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    cases = [("name,stiffness_pa\na.tif,100\n", "needs a 'file' column"),
             ("file,donor\na.tif,d1\n", "'stiffness_pa' or a 'class'"),
             ("file,stiffness_pa\na.tif,100\na.tif,abc\n", "row 3: stiffness_pa 'abc' is not a number"),
             ("file,stiffness_pa\na.tif,-5\n", "row 2: stiffness_pa must be a positive"),
             ("file,stiffness_pa\na.tif,100\nmissing.tif,100\n", "row 3: file 'missing.tif' not found"),
             ("file,stiffness_pa\nnotes.txt,100\n", "row 2: file 'notes.txt' is not an image"),
             ("file,stiffness_pa,class\na.tif,,\n", "row 2: neither stiffness_pa nor class")]
    for text, msg in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=msg.replace("(", r"\(").replace(")", r"\)")):
            data.read_table(_csv(tmp_path, text))
    with pytest.raises(data.ImageError, match="row 3: cannot read image .*broken.tif"):
        data.load(_csv(tmp_path, "file,stiffness_pa\na.tif,100\nbroken.tif,200\n"), size=32, progress=False)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        data.read_table(tmp_path / "nope.csv")


def test_formats_preprocessing_and_exclusion(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    img, mask, _ = synth.render_cell(rng, 2000.0, size=128)
    rgb = np.repeat((img // 257).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    g = data.read_image(tmp_path / "c.png")
    assert g.ndim == 2 and g.dtype == np.uint8
    x = data.preprocess(img, size=64)
    assert x.shape == (64, 64) and abs(float(np.median(x))) < 0.05  # background at 0
    # the window is centred on the cell: the cell's centroid falls near the window's centre
    cy, cx = np.argwhere(mask).mean(0)
    ly, lx = data.locate_cell(data.normalise(img))
    assert np.hypot(ly - cy, lx - cx) < 4
    over, _, _ = synth.render_cell(rng, 2000.0, overexposed=True)
    with pytest.raises(data.ImageError, match="over-exposed"):
        data.preprocess(over)
    tifffile.imwrite(tmp_path / "ok.tif", img)
    tifffile.imwrite(tmp_path / "over.tif", over)
    ds = data.load(_csv(tmp_path, "file,stiffness_pa,class\nok.tif,2000,stiff\nover.tif,2000,stiff\nc.png,1500,soft\n"),
                   size=64, progress=False)
    assert len(ds) == 2 and ds.class_names == ("soft", "stiff") and list(ds.classes) == [1, 0]
    assert len(ds.excluded) == 1 and ds.excluded[0][0] == 3 and "over-exposed" in ds.excluded[0][2]
    np.testing.assert_allclose(ds.log_stiffness, np.log10([2.0, 1.5]), rtol=1e-6)
    binned = data.load(tmp_path / "labels.csv", size=64, thresholds_pa=[1800.0], progress=False)
    assert binned.class_names == ("<1800", ">1800") and list(binned.classes) == [1, 0]


def test_group_split_keeps_donors_apart():
    groups = np.repeat([f"d{i}" for i in range(10)], np.arange(3, 13))
    tr, va, te = data.group_split(groups, (0.6, 0.2, 0.2), seed=4)
    sets = [set(groups[i]) for i in (tr, va, te)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(tr) + len(va) + len(te) == len(groups) and all(len(s) for s in sets)
    assert abs(len(tr) / len(groups) - 0.6) < 0.15
    with pytest.raises(ValueError, match="2 groups cannot fill 3 splits"):
        data.group_split(["a", "a", "b"], (0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="sum to 1"):
        data.group_split(groups, (0.5, 0.2, 0.2))


def test_metrics_against_scikit_learn_and_by_hand():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 200), 0, 1)
    score[:20] = np.round(score[:20], 1)  # ties
    proba = np.column_stack([1 - score, score])
    m = metrics.classification_metrics(y, proba, ("soft", "stiff"))
    pred = proba.argmax(1)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["npv"] == pytest.approx(skm.precision_score(1 - y, 1 - pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    fpr, tpr, _ = metrics.roc_curve(y, score)
    fpr2, tpr2, _ = skm.roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr2)
    np.testing.assert_allclose(tpr, tpr2)
    # three classes: macro one-vs-rest AUC
    y3 = rng.integers(0, 3, 150)
    p3 = rng.dirichlet(np.ones(3), 150) + np.eye(3)[y3] * 0.5
    p3 /= p3.sum(1, keepdims=True)
    m3 = metrics.classification_metrics(y3, p3)
    assert m3["auc"] == pytest.approx(skm.roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    assert m3["f1"] == pytest.approx(skm.f1_score(y3, p3.argmax(1), average="macro"))
    # regression, by hand: 100 -> 150 is 50 % off, 1000 -> 500 is 50 %, 10 -> 10 is 0 %
    r = metrics.regression_metrics([100.0, 1000.0, 10.0], [150.0, 500.0, 10.0])
    assert r["mape_percent"] == pytest.approx(100 / 3)
    assert r["spearman"] == pytest.approx(1.0)
    lt, lp = np.log10([100, 1000, 10]), np.log10([150, 500, 10])
    assert r["r2_log10"] == pytest.approx(skm.r2_score(lt, lp))
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_curve([1, 1], [0.2, 0.3])


def test_tiny_model_overfits_a_tiny_set(cells):
    """16 cells, one fixed batch, no augmentation: the loss falls at least 20-fold (measured: 300-fold)."""
    from tfm.learn.optim import make_optimizer

    ds = data.load(cells / "labels.csv", size=64, progress=False).subset(np.arange(16))
    cfg = train.StiffnessConfig(net=TINY, optim=OptimConfig(learning_rate=3e-3, warmup_steps=5))
    model = StiffnessNet(dataclasses_replace(TINY, n_classes=2))
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, 150), wrt=nnx.Param)
    batch = train._batch(ds, np.arange(16))
    losses = [float(train.train_step(model, opt, batch, jax.random.key(0), "both", 1.0)[0]) for _ in range(150)]
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_training_resume_is_exact_and_splits_are_by_donor(cells, tmp_path):
    cfg = train.StiffnessConfig(csv=str(cells / "labels.csv"), size=64, net=TINY, epochs=2, batch_size=16,
                                checkpoint_every=2)
    ds = train.load_data(cfg, progress=False)
    full = train.train(cfg, tmp_path / "a", progress=False, data=ds)
    part = train.train(cfg, tmp_path / "b", progress=False, data=ds, max_steps=3)
    assert not part["finished"]
    rest = train.train(cfg, tmp_path / "b", progress=False, data=ds)
    assert rest["finished"] and rest["steps"] == full["steps"]
    a, _ = train.load_model(tmp_path / "a")
    b, _ = train.load_model(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    splits = json.loads((tmp_path / "a" / "splits.json").read_text())
    donor = dict(zip(ds.files, ds.groups))
    donors = [{donor[f] for f in splits[k]} for k in ("train", "validation", "test")]
    assert not (donors[0] & donors[1] or donors[0] & donors[2] or donors[1] & donors[2])
    with pytest.raises(ValueError, match="another configuration"):
        train.train(dataclasses_replace(cfg, optim=OptimConfig(learning_rate=0.1)), tmp_path / "a", progress=False, data=ds)


def test_trained_model_ranks_stiffness_and_looks_at_the_cell(cells, trained):
    run, cfg, _ = trained
    from tfm.cli.stiffness import write_evaluation

    res, ds, pred = train.evaluation(run, split="test", progress=False)
    write_evaluation(run / "eval", res, ds, pred)
    assert res["regression"]["spearman"] > 0.7, res  # measured 0.89
    assert (run / "eval" / "roc.png").stat().st_size > 0 and (run / "eval" / "predictions.csv").exists()
    model, desc = train.load_model(run)
    masks = synth.load_masks(cells)
    test_files = json.loads((run / "splits.json").read_text())["test"]
    on_cell, area = [], []
    for f in test_files[:8]:
        from pathlib import Path

        img = data.read_image(f)
        x = data.preprocess(img, 64)
        # the mask, moved with the same window as the image
        m = masks[Path(f).name].astype(np.float32)
        cy, cx = data.locate_cell(data.normalise(img))
        y0, x0 = int(round(cy - 32)), int(round(cx - 32))
        mp = np.pad(m, 64)[y0 + 64 : y0 + 128, x0 + 64 : x0 + 128] > 0.5
        fr, ar = explain.mask_fraction(explain.gradcam(model, x), mp)
        on_cell.append(fr)
        area.append(ar)
    # Measured: Grad-CAM puts 0.37 of its mass on cells covering 0.08 of the window (4.7x).
    assert np.mean(on_cell) > 2 * np.mean(area), (on_cell, area)
    sg = explain.smoothgrad(model, x, n=4)
    assert sg.shape == (64, 64) and 0 <= sg.min() and sg.max() == pytest.approx(1.0)


def test_shape_baseline_learns_area(cells):
    ds = data.load(cells / "labels.csv", size=64, progress=False)
    f = baseline.features(ds.images[:20])
    assert f.shape == (20, len(baseline.FEATURES)) and np.all(f[:, 0] > 20)  # every cell found
    b = baseline.ShapeBaseline(n_classes=2).fit(ds.images, ds.log_stiffness, ds.classes)
    p = b.predict(ds.images)
    assert metrics.regression_metrics(1000 * 10.0 ** ds.log_stiffness, p["stiffness_pa"])["spearman"] > 0.6
    assert p["proba"].shape == (len(ds), 2)


def test_cli_synth_train_evaluate_predict_explain(tmp_path, capsys):
    from tfm import cli

    assert cli.main(["stiffness", "synth", "--n", "30", "--size", "64", "--donors", "4", "-o", str(tmp_path / "c"), "--quiet"]) == 0
    rc = cli.main(["stiffness", "train", "--data", str(tmp_path / "c" / "labels.csv"), "--out", str(tmp_path / "r"),
                   "--epochs", "1", "--size", "64", "--widths", "8", "16", "--batch-size", "8", "--quiet"])
    assert rc == 0 and (tmp_path / "r" / "model" / "model.json").exists()
    assert cli.main(["stiffness", "evaluate", str(tmp_path / "r"), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["split"] == "test"
    assert cli.main(["stiffness", "predict", str(tmp_path / "r"), str(tmp_path / "c" / "images"), "-o",
                     str(tmp_path / "p.csv"), "--quiet"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 31
    img = tmp_path / "c" / "images" / "cell_00000.tif"
    assert cli.main(["stiffness", "explain", str(tmp_path / "r"), str(img), "--png", str(tmp_path / "x.png"),
                     "--target", "stiff"]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["stiffness", "explain", str(tmp_path / "r"), str(img), "--target", "medium"]) == 2
    assert "--target must be" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("file,stiffness_pa\nimages/cell_00000.tif,x\n")
    shutil.copy(tmp_path / "bad.csv", tmp_path / "c" / "bad.csv")
    assert cli.main(["stiffness", "train", "--data", str(tmp_path / "c" / "bad.csv"), "--out", str(tmp_path / "r2"),
                     "--quiet"]) == 2
    assert "row 2: stiffness_pa 'x' is not a number" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()  # a run that failed on its data writes nothing


def test_hyperparameter_search_uses_the_validation_split(cells, tmp_path):
    pytest.importorskip("optuna")
    base = train.StiffnessConfig(csv=str(cells / "labels.csv"), size=64, net=TINY, batch_size=16)
    res = search.search(base, tmp_path / "s", n_trials=2, trial_epochs=1, progress=False)
    rep = json.loads((tmp_path / "s" / "search.json").read_text())
    assert res["trials"] == 2 and len(rep["trials"]) == 2
    assert rep["best"]["value"] == min(t["value"] for t in rep["trials"])
    best = configs.from_dict(train.StiffnessConfig, json.loads((tmp_path / "s" / "best_config.json").read_text()))
    assert best.optim.learning_rate == pytest.approx(rep["best"]["params"]["learning_rate"])
    assert best.net.widths[0] == rep["best"]["params"]["width"]
    again = search.search(base, tmp_path / "s", n_trials=2, trial_epochs=1, progress=False)  # resumed: nothing to do
    assert again["trials"] == 2
