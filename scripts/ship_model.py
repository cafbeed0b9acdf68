"""Copy a trained run's best model into the package as the shipped default, with its card.

    python scripts/ship_model.py RUN [--command "the tfm train command"] [--data-command "..."]
                                     [--bench benchmarks/results/dl_vs_classical.json ...]

Writes tfm/nn/weights/default/{model.json, weights/, MODEL_CARD.md}: the model card holds
the training data and command, the architecture, the per-epoch validation metrics from
RUN/metrics.jsonl, and (when --bench is given) the held-out benchmark against the
classical pipeline. Re-run it after `python benchmarks/dl_vs_classical.py` to refresh the
card's accuracy table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tfm.atomic import atomic_dir, write_text
from tfm.learn import config as configs
from tfm.nn.unet3d import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "tfm" / "nn" / "weights" / "default"


def card(run: Path, desc: dict, rows: list, train_cfg: dict, command: str, data_command: str, benches: list,
         notes: list = ()) -> str:
    best = min(rows, key=lambda r: r["val"]["loss"])
    optim = train_cfg.get("optim", train_cfg)
    c, cfg = desc["card"], desc["config"]
    flow = cfg.get("flow", {})
    L = ["# Model card: tfm default 3D force network", "",
         "Bead volume pair -> displacement (µm) and body-force density (pN/µm³): a parameter-free coarse-to-fine "
         "Lucas-Kanade front end measures the motion, a physics-informed network (linear in that motion, the "
         "constitutive law in its forward pass) turns it into displacement and force. See docs/learned.md.", "",
         "## Intended use and limits", "",
         "- Bead volume pairs of a cell in a soft, homogeneous, isotropic gel (E 100 Pa - 10 kPa, ν 0.3-0.48), imaged "
         "with a PSF elongated along z. The stacks keep their own voxels, binned by an integer factor along an axis only where "
         f"finer than {cfg.get('spacing_um')} µm (the working grid); the fields come out on the network's grid, 2 working voxels "
         "per step (e.g. 1.6 x 1.2 x 1.2 µm for a confocal stack of 0.8 x 0.3 x 0.3 µm voxels).",
         f"- Trained on synthetic data only ({'; '.join(' x '.join(f'{h:g}' for h in sp) for sp in c.get('data_spacing_um', []))} "
         "µm voxels; the data recipe below). Outside that range -- other optics, bead sizes, noise -- fine-tune it on "
         "your own pairs with `tfm adapt`, and compare with the classical pipeline on a pair first (docs/learned.md shows "
         "how on the FM-Track stacks).",
         "- An identical pair gives exactly zero displacement and force; the stacks' drift is taken out of the measured motion before the network, as "
         "the DVC removes it (`drift=\"auto\"`).",
         "- On a real cell (FM-Track, docs/learned.md section 7) its displacement follows the DVC's, but its forces "
         "did not: their contractility had the wrong sign and their net force was far from zero. Until it is validated "
         "on real cells with known forces, take force maps and contractility of real cells from the classical pipeline.",
         *[f"- {n}" for n in notes], "",
         "## Training data", "",
         f"- Files: {', '.join(Path(p).name for p in c.get('data', []))} ({c.get('train_samples')} training and "
         f"{c.get('val_samples')} validation samples, seeded split); matrix laws: {', '.join(c.get('laws', []))}.",
         f"- Generated with: `{data_command}`" if data_command else "- Generated with `tfm synth`.", "",
         "## Training", "",
         f"- Command: `{command}`" if command else None,
         f"- Architecture: gated two-stream U-Net, widths {cfg['widths']}, {cfg['convs_per_level']} convolutions per "
         f"level, at half the LK grid's resolution (space-to-depth in, pixel shuffle out); constitutive layer in the "
         f"forward pass: {'yes' if cfg.get('physics_forward', True) else 'no'}; motion front end {flow or 'defaults'}.",
         f"- Optimiser {optim['optimizer']}, peak learning rate {optim['learning_rate']}, warm-up {optim['warmup_steps']} "
         f"steps, cosine decay, batch {train_cfg['batch_size']}, crops {train_cfg.get('crop')} LK voxels, "
         f"{train_cfg['epochs']} epochs; loss weights {train_cfg['loss']}.",
         f"- Selected: epoch {best['epoch']} (step {best['step']}) of {len(rows)}, lowest validation loss "
         f"{best['val']['loss']:.4f}; validation relative L2 error on the LK grid (mean over samples) u "
         f"{best['val']['rel_u']:.3f} (of the field's variation), f {best['val']['rel_f']:.3f} (mean over box sizes 1, 2, 4).",
         f"- Machine: {c.get('machine', 'the project CPU machine (2 cores)')}; "
         f"{sum(r['seconds'] for r in rows) / 60:.0f} min of training.", "",
         "| epoch | train loss | val loss | val rel. err. u | val rel. err. f |", "|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['epoch']} | {r['train']['loss']:.4f} | {r['val']['loss']:.4f} | {r['val']['rel_u']:.3f} | {r['val']['rel_f']:.3f} |")
    for b in benches:
        s = b["summary"]
        L += ["", f"## Held-out benchmark (`{b['command']}`)", "",
              f"{s['n']} held-out pairs (unseen seeds; {', '.join(s['by_set'])}). Medians (means):", "",
              "| method | displacement RMS error at the DVC points (µm) | force rel. L2 (DVC grid) | contractility rel. error |",
              "|---|---|---|---|"]
        for m in ("dl", "classical"):
            r = s[m]
            L.append(f"| {m} | {r['u_rms_error_um']:.4f} | {r['force_rel_l2']:.3f} ({r['mean_force_rel_l2']:.3f}) | "
                     f"{r['contractility_rel_error']:.3f} ({r['mean_contractility_rel_error']:.3f}) |")
        if b.get("fmtrack"):
            f, a = b["fmtrack"], b["fmtrack"]["agreement"]
            L += ["", f"FM-Track (CytoD -> Normal, {' x '.join(map(str, f['dl']['shape']))} voxels): Pearson r with the DVC "
                  f"(z, y, x) {', '.join(f'{v:.2f}' for v in a['pearson_r_zyx'])} on {a['windows_compared']} windows "
                  f"outside the cell; {f['dl']['warm_s']:.1f} s warm against {f['classical']['warm_s']:.0f} s for the "
                  f"classical pipeline, {f['dl']['peak_rss_mb'] / 1024:.1f} GB peak."]
    return "\n".join(line for line in L if line is not None) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a tfm train run directory")
    p.add_argument("--command", default="", help="the tfm train command that made the run")
    p.add_argument("--data-command", default="", help="the tfm synth command(s) that made its data")
    p.add_argument("--bench", nargs="*", default=[], help="reports of benchmarks/dl_vs_classical.py (.json) to include")
    p.add_argument("--machine", default="", help="where it was trained")
    p.add_argument("--card-only", action="store_true", help="only rewrite MODEL_CARD.md (weights already shipped)")
    p.add_argument("--note", action="append", default=[], help="a line for the card's limits (repeatable)")
    args = p.parse_args(argv)
    run = Path(args.run)
    desc = json.loads((run / "model" / "model.json").read_text())
    # every setting explicit (a run saved before a setting existed runs with its default)
    desc["config"] = configs.to_dict(configs.from_dict(ModelConfig, desc["config"]))
    if args.machine:
        desc["card"]["machine"] = args.machine
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_cfg = json.loads((run / "config.json").read_text())
    benches = [json.loads(Path(b).read_text()) for b in args.bench]
    if not args.card_only:
        desc["card"]["data"] = [Path(d).name for d in desc["card"].get("data", [])]
        with atomic_dir(DEST) as tmp:
            shutil.copytree(run / "model", tmp, dirs_exist_ok=True)
            (tmp / "model.json").write_text(json.dumps(desc, indent=2))
    write_text(DEST / "MODEL_CARD.md", card(run, desc, rows, train_cfg, args.command, args.data_command, benches, args.note))
    print(f"wrote {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
