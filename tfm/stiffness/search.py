"""Hyperparameter search for the stiffness CNN with optuna's Bayesian (TPE) sampler.

The space: peak learning rate (log-uniform 1e-4 - 3e-3), width of the first stage (8, 16,
24, 32; later stages double), dropout (0 - 0.5) and weight decay (log-uniform 1e-6 -
1e-2). Each trial is a short training run (:func:`tfm.stiffness.train.train`) in
``RUN/trials/NNN``; its objective is the best **validation** loss, so the test split never
informs the choice. The study lives in ``RUN/study.db`` (SQLite), so an interrupted search
resumes where it stopped; ``RUN/search.json`` lists every trial and ``RUN/best_config.json``
is the winning configuration, ready for ``tfm stiffness train --config``.

optuna is an optional dependency: ``pip install 'tfm[stiffness]'``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..atomic import write_json
from ..learn import config as configs
from ..progress import resolve
from .train import StiffnessConfig, load_data, train

SPACE = {"learning_rate": (1e-4, 3e-3), "width": (8, 16, 24, 32), "dropout": (0.0, 0.5), "weight_decay": (1e-6, 1e-2)}


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("the hyperparameter search needs optuna: pip install 'tfm[stiffness]' (or pip install optuna)") from None
    return optuna


def trial_config(base: StiffnessConfig, params: dict) -> StiffnessConfig:
    w = int(params["width"])
    n = len(base.net.widths)
    net = dataclasses.replace(base.net, widths=tuple(w * 2**i for i in range(n)), dropout=float(params["dropout"]))
    optim = dataclasses.replace(base.optim, learning_rate=float(params["learning_rate"]),
                                weight_decay=float(params["weight_decay"]))
    return dataclasses.replace(base, net=net, optim=optim)


def search(base: StiffnessConfig, run_dir, n_trials: int = 20, trial_epochs: int | None = None, seed: int = 0,
           progress=None) -> dict:
    """Run (or resume) the search; returns the best trial's parameters and value."""
    optuna = _optuna()
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if trial_epochs is not None:
        base = dataclasses.replace(base, epochs=int(trial_epochs))
    progress = resolve(progress)
    data = load_data(base, progress)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="stiffness", storage=f"sqlite:///{run / 'study.db'}", load_if_exists=True,
                                direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial):
        lo, hi = SPACE["learning_rate"]
        params = {"learning_rate": trial.suggest_float("learning_rate", lo, hi, log=True),
                  "width": trial.suggest_categorical("width", list(SPACE["width"])),
                  "dropout": trial.suggest_float("dropout", *SPACE["dropout"]),
                  "weight_decay": trial.suggest_float("weight_decay", *SPACE["weight_decay"], log=True)}
        cfg = trial_config(base, params)
        res = train(cfg, run / "trials" / f"{trial.number:03d}", progress=False, data=data)
        progress.message(f"trial {trial.number}: {params} -> best validation loss {res['best_val_loss']:.4f}")
        return res["best_val_loss"]

    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done)
    best = study.best_trial
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} for t in study.trials]
    write_json(run / "search.json", {"space": {k: list(v) for k, v in SPACE.items()}, "trials": rows,
                                     "best": {"number": best.number, "value": best.value, "params": best.params}})
    cfg = trial_config(dataclasses.replace(base, epochs=base.epochs), best.params)
    write_json(run / "best_config.json", configs.to_dict(cfg))
    return {"best_params": best.params, "best_value": best.value, "trials": len(rows),
            "best_config": str(run / "best_config.json")}
