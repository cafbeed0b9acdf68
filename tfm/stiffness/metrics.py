"""The metrics the single-cell mechanics literature reports, in NumPy/SciPy.

Regression (stiffness in Pa, compared on the linear scale): absolute percentage error per
cell, its mean (MAPE; Wu, Feng et al. 2025 report an average percentage error of 57 %),
R² of log10 stiffness, Spearman's rank correlation.

Classification: ROC curve and its AUC (binary; one-vs-rest macro average for more
classes), accuracy, F1, sensitivity (recall), specificity, PPV (precision), NPV, the
confusion matrix (rows: true class, columns: predicted). For two classes the positive
class is index 1 (e.g. ``stiff`` in ``("soft", "stiff")``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def ape(true_pa, pred_pa) -> np.ndarray:
    """Absolute percentage error per sample, %."""
    t, p = np.asarray(true_pa, float), np.asarray(pred_pa, float)
    return 100.0 * np.abs(p - t) / np.abs(t)


def regression_metrics(true_pa, pred_pa) -> dict:
    t, p = np.asarray(true_pa, float), np.asarray(pred_pa, float)
    if t.shape != p.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError(f"true_pa and pred_pa must be 1D of the same length >= 2, got {t.shape} and {p.shape}")
    lt, lp = np.log10(t), np.log10(p)
    ss_res = np.sum((lt - lp) ** 2)
    ss_tot = np.sum((lt - lt.mean()) ** 2)
    e = ape(t, p)
    return {"n": int(len(t)), "mape_percent": float(e.mean()), "median_ape_percent": float(np.median(e)),
            "r2_log10": float(1 - ss_res / ss_tot) if ss_tot > 0 else float("nan"),
            "spearman": float(stats.spearmanr(t, p).statistic),
            "rmse_log10": float(np.sqrt(np.mean((lt - lp) ** 2)))}


def roc_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending, ties merged."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, float)
    if y.all() or not y.any():
        raise ValueError("roc_curve needs both classes in y_true")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(y_true, score) -> float:
    """Area under the ROC curve (= the Mann-Whitney probability that a positive outranks a negative)."""
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _nanmean(values) -> float:
    v = np.asarray(values, float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _ratio(a, b) -> float:
    return float(a / b) if b else float("nan")


def classification_metrics(y_true, proba, class_names=None) -> dict:
    """``proba``: (N, K) class probabilities. Binary metrics use class 1 as positive;
    for K > 2 they are macro averages of one-vs-rest."""
    y = np.asarray(y_true, int)
    p = np.asarray(proba, float)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"proba must be (N, K) with N = len(y_true) = {len(y)}, got {p.shape}")
    k = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    pred = p.argmax(1)
    cm = confusion_matrix(y, pred, k)
    per = []
    for c in (range(1, 2) if k == 2 else range(k)):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        sens, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        a = auc(y == c, p[:, c]) if 0 < np.sum(y == c) < len(y) else float("nan")
        per.append({"sensitivity": sens, "specificity": _ratio(tn, tn + fp), "ppv": ppv, "npv": _ratio(tn, tn + fn),
                    "f1": f1, "auc": a})
    out = {key: _nanmean([d[key] for d in per]) for key in per[0]}
    out.update({"n": int(len(y)), "accuracy": float(np.mean(pred == y)), "confusion_matrix": cm.tolist(),
                "class_names": names, "positive_class": names[1] if k == 2 else "macro one-vs-rest"})
    return out
