"""Stiffness CNN vs a shape-feature baseline on synthetic bright-field cells; inference speed.

    python -m benchmarks.stiffness [--out benchmarks/results] [--n-train 1200] [--n-test 400] [--epochs 60]
                                   [--search-trials 10] [--config best_config.json]

Accuracy: both methods learn from the same training set (``tfm stiffness synth``, seed 11,
12 donors; the CNN's model selection on its group-wise validation split; ``--config``
takes a configuration found by ``tfm stiffness search`` on that same training set, and
``--search-trials N`` runs that search here first, resumably, in WORK/search) and are scored
on a separate test set drawn with another seed (seed 12: other donors and cells). The
baseline is ridge regression (log10 stiffness) and logistic regression (soft/stiff) on
classic shape features (area, perimeter, roundness, eccentricity, axes, solidity,
intensity; :mod:`tfm.stiffness.baseline`). The images are synthetic: the comparison
validates the machinery, not biology (see docs/stiffness.md).

Speed: images per second of the jit-compiled forward pass at 128 x 128 (batches of 1, 32
and 256, after compilation, median of repeats), and of the whole path from image files
(reading + preprocessing + network) on this machine's CPU (and GPU where run there).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .common import machine, write_report


def throughput(model, size: int, batches=(1, 32, 256), repeats: int = 5) -> dict:
    import jax.numpy as jnp

    from tfm.stiffness.train import forward

    out = {}
    for b in batches:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(b, size, size, 1)).astype(np.float32))
        forward(model, x)["log_stiffness"].block_until_ready()  # compile
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            forward(model, x)["log_stiffness"].block_until_ready()
            ts.append(time.perf_counter() - t0)
        out[str(b)] = {"seconds": float(np.median(ts)), "images_per_s": float(b / np.median(ts))}
    return out


def markdown(rep: dict) -> str:
    c = rep["cnn"]["config"]
    L = ["# Single-cell stiffness from bright-field images: CNN vs shape features", "",
         f"Command: `{rep['command']}`; {rep['machine']}, jax {rep['jax']} ({rep['backend']}). "
         f"Training set {rep['train_images']} images (seed 11), test set {rep['test_images']} images (seed 12, other donors); "
         f"{rep['excluded_test']} over-exposed test images excluded by preprocessing. CNN: {rep['cnn']['parameters']:,} "
         f"parameters (widths {c['widths']}, dropout {c['dropout']:.2f}, peak learning rate {c['learning_rate']:.2g}, weight decay "
         f"{c['weight_decay']:.2g}), {rep['cnn']['epochs']} epochs (best validation loss at epoch {rep['cnn']['best_epoch']}), "
         f"trained in {rep['cnn']['train_seconds'] / 60:.1f} min. "
         "Synthetic images: this validates the machinery, not biology.", "",
         "| method | MAPE (%) | median APE (%) | R² (log10 E) | Spearman | AUC | F1 | accuracy | sensitivity | specificity | PPV | NPV |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("cnn", "shape baseline"):
        r, c = rep["results"][name]["regression"], rep["results"][name]["classification"]
        L.append(f"| {name} | {r['mape_percent']:.1f} | {r['median_ape_percent']:.1f} | {r['r2_log10']:.3f} | {r['spearman']:.3f} | "
                 f"{c['auc']:.3f} | {c['f1']:.3f} | {c['accuracy']:.3f} | {c['sensitivity']:.3f} | {c['specificity']:.3f} | "
                 f"{c['ppv']:.3f} | {c['npv']:.3f} |")
    L += ["", "Inference speed at 128 x 128 (forward pass only, after compilation; median of 5):", "",
          "| batch | seconds | images/s |", "|---|---|---|"]
    for b, t in rep["throughput"].items():
        L.append(f"| {b} | {t['seconds']:.4f} | {t['images_per_s']:.0f} |")
    e = rep["end_to_end"]
    L += ["", f"From files (read TIFF, preprocess, network, {e['images']} images): {e['images_per_s']:.0f} images/s "
          f"(preprocessing alone {e['preprocess_images_per_s']:.0f} images/s). The anchor, Kim et al. 2022, reports 324 "
          "images/s for DenseNet121 on a 2022 GPU; no GPU was measured here."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default="benchmarks/work/stiffness", help="where the synthetic sets and the run go")
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--config", help="a StiffnessConfig JSON (e.g. best_config.json of tfm stiffness search); "
                   "its data and epochs are replaced by this script's")
    p.add_argument("--search-trials", type=int, default=0,
                   help="first run an optuna search of this many trials (15 epochs each) on the training set")
    args = p.parse_args(argv)
    import jax

    from tfm.nn.unet3d import count_parameters
    from tfm.stiffness import baseline, data, metrics, synth, train

    work = Path(args.work)
    rules = synth.MorphologyRules(overexposed_fraction=0.02)
    sets = {}
    for name, n, seed in (("train", args.n_train, 11), ("test", args.n_test, 12)):
        folder = work / f"{name}_{n}_{seed}"
        if not (folder / "labels.csv").exists():
            synth.generate(folder, n, 128, seed, rules, n_donors=12, progress=False)
        sets[name] = folder
    csv = str(sets["train"] / "labels.csv")
    if args.search_trials:
        from tfm.stiffness import search

        found = search.search(train.StiffnessConfig(csv=csv), work / "search", args.search_trials, trial_epochs=15)
        args.config = found["best_config"]
    if args.config:
        import dataclasses

        cfg = dataclasses.replace(train.StiffnessConfig.from_dict(json.loads(Path(args.config).read_text())), csv=csv,
                                  epochs=args.epochs)
    else:
        cfg = train.StiffnessConfig(csv=csv, epochs=args.epochs)
    tr_data = train.load_data(cfg, progress=False)
    run = work / f"run_{args.n_train}_{args.epochs}_{'search' if args.config else 'default'}"
    summary = train.train(cfg, run, progress=True, data=tr_data)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    t_train = sum(r["seconds"] for r in epochs)  # also right when the run was resumed
    model, _ = train.load_model(run)
    test = data.load(sets["test"] / "labels.csv", 128, class_names=tr_data.class_names, progress=False)
    truth_pa = 1000.0 * 10.0 ** test.log_stiffness
    results = {}
    pred = train.predict_arrays(model, test.images)
    results["cnn"] = {"regression": metrics.regression_metrics(truth_pa, pred["stiffness_pa"]),
                      "classification": metrics.classification_metrics(test.classes, pred["proba"], test.class_names)}
    fit_idx = np.flatnonzero(np.isin(tr_data.files, json.loads((run / "splits.json").read_text())["train"]))
    base = baseline.ShapeBaseline(n_classes=len(tr_data.class_names)).fit(
        tr_data.images[fit_idx], tr_data.log_stiffness[fit_idx], tr_data.classes[fit_idx])
    bp = base.predict(test.images)
    results["shape baseline"] = {"regression": metrics.regression_metrics(truth_pa, bp["stiffness_pa"]),
                                 "classification": metrics.classification_metrics(test.classes, bp["proba"], test.class_names)}
    files = [Path(f) for f in test.files[:200]]
    t0 = time.perf_counter()
    pre = np.stack([data.preprocess(data.read_image(f), 128) for f in files])[..., None]
    t_pre = time.perf_counter() - t0
    train.predict_arrays(model, pre, batch_size=64)
    t1 = time.perf_counter()
    train.predict_arrays(model, pre, batch_size=64)
    t_net = time.perf_counter() - t1
    rep = {"command": "python -m benchmarks.stiffness " + shlex.join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "jax": jax.__version__, "backend": jax.default_backend(),
           "train_images": len(tr_data), "test_images": len(test), "excluded_test": len(test.excluded),
           "cnn": {"parameters": count_parameters(model), "epochs": args.epochs, "train_seconds": t_train,
                   "best_val_loss": summary["best_val_loss"], "best_epoch": min(epochs, key=lambda r: r["val"]["loss"])["epoch"],
                   "config": {"learning_rate": cfg.learning_rate, "widths": list(cfg.net.widths), "dropout": cfg.net.dropout,
                              "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size}},
           "results": results, "throughput": throughput(model, 128),
           "end_to_end": {"images": len(files), "images_per_s": len(files) / (t_pre + t_net),
                          "preprocess_images_per_s": len(files) / t_pre}}
    write_report(args.out, "stiffness", rep, markdown(rep))
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
