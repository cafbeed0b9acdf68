r"""Choice of the Tikhonov parameter for problems that are diagonal in a known basis.

Fourier force reconstruction decouples into independent scalar problems
``b_i = s_i x_i + noise`` (one per wavevector and polarisation, ``s_i`` the Green's
function's eigenvalue, ``b_i`` the displacement's projection). Zeroth-order Tikhonov

.. math::  \hat x = \arg\min_x \|S x - b\|^2 + \alpha \|x\|^2
           \quad\Rightarrow\quad \hat x_i = \frac{s_i}{s_i^2 + \alpha} b_i
           = \frac{\varphi_i}{s_i} b_i,\qquad \varphi_i = \frac{s_i^2}{s_i^2+\alpha}

so residual and solution norms are sums over the filter factors ``phi_i`` and every
parameter-choice rule costs O(number of modes) per trial ``alpha``:

* **GCV** (generalised cross-validation; Golub, Heath & Wahba, Technometrics 1979):
  minimise ``V(alpha) = n ||r||^2 / (n - sum_i phi_i)^2``. Needs no noise estimate and
  minimises the expected prediction error asymptotically (Wahba 1990, ch. 4). It is the
  default (``"auto"``) because it is a smooth 1D minimisation and, in
  ``benchmarks/fttc.py``, gives force errors at least as low as the L-curve on every
  noise level measured.
* **L-curve** (Hansen & O'Leary, SIAM J. Sci. Comput. 1993): the corner (maximum
  curvature) of ``(log ||r||, log ||x||)``. Offered for comparison; its corner is
  known to be unreliable for smooth solutions (Vogel, Inverse Problems 1996).
* **Bayesian evidence** (Huang et al., Sci Rep 9, 539 (2019), as in pytraction): with
  noise precision ``beta`` and a Gaussian prior of precision ``alpha_p`` on the solution,
  maximise the marginal likelihood over ``lambda = alpha_p / beta``::

      log p(b) = M/2 log beta + N/2 log(lambda beta) - beta/2 (||r||^2 + lambda ||x||^2)
                 - 1/2 sum_i log(beta (lambda + s_i^2)) - M/2 log(2 pi)

  ``beta = 1 / noise_variance`` when the noise variance of the data is known (e.g. from
  displacements far from the cell); otherwise ``beta`` is profiled out at its optimum
  ``M / (||r||^2 + lambda ||x||^2)``. For ``beta`` to be a per-sample precision, ``b2``
  must be the *unitary* (orthonormal) Fourier power.

``weights`` count how many real degrees of freedom each entry stands for (2 for a
complex coefficient of a real FFT that also stands for its conjugate, 1 otherwise); an
entry with ``s = inf`` (the k = 0 mode of an infinite medium) is fitted exactly and
carries no solution. Modes are grouped by their eigenvalue before any rule is applied
(:meth:`DiagonalProblem.from_modes`), so choosing alpha costs O(bins), not O(modes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar

RULES = ("gcv", "lcurve", "bayesian")


def bin_modes(s, b2, w, n_bins: int):
    """Group modes in ``n_bins`` equal bins of ``log s`` (jit-able; ``n_bins`` static).

    Returns ``(sum w s, sum w b2, sum w)`` per bin and the weight of the modes with
    ``s = inf`` or ``s <= 0`` (fitted exactly)."""
    finite = jnp.isfinite(s) & (s > 0)
    n_exact = jnp.sum(jnp.where(finite, 0.0, w))
    logs = jnp.log(jnp.where(finite, s, 1.0))
    lo = jnp.min(jnp.where(finite, logs, jnp.inf))
    hi = jnp.max(jnp.where(finite, logs, -jnp.inf))
    idx = jnp.clip(((logs - lo) / jnp.maximum(hi - lo, 1e-12) * (n_bins - 1)).astype(jnp.int32), 0, n_bins - 1)
    idx = jnp.where(finite, idx, n_bins)  # a spill bin for the exact modes, dropped
    seg = lambda v: jax.ops.segment_sum(v, idx, n_bins + 1)[:n_bins]  # noqa: E731
    return seg(w * jnp.where(finite, s, 0.0)), seg(w * b2), seg(w), n_exact


@dataclasses.dataclass(frozen=True)
class DiagonalProblem:
    """A Tikhonov problem diagonal in some basis, summarised for parameter choice.

    Build it with :meth:`from_modes`. Attributes (one entry per group of modes):
      s: eigenvalue of the forward operator (> 0, finite).
      wb2: sum over the group of weight x squared data projection.
      weights: real degrees of freedom in the group.
      n_exact: degrees of freedom of modes with ``s = inf`` (fitted exactly, no solution).
    """

    s: np.ndarray
    wb2: np.ndarray
    weights: np.ndarray
    n_exact: float

    @classmethod
    def from_modes(cls, s, b2, weights, n_bins: int | None = 8192) -> "DiagonalProblem":
        """Summarise modes ``(s, b2, weights)``.

        Every rule depends on the modes only through ``s``, so modes are grouped in
        ``n_bins`` bins of equal width in ``log s`` (at 8192 bins, the relative width is
        about 0.1-0.3 % for FFT grids up to 512³); each group carries its weighted mean
        ``s``. ``n_bins=None`` keeps every mode (exact, slower on large grids).
        """
        s, b2, w = (jnp.ravel(jnp.asarray(a)) for a in (s, b2, weights))
        if n_bins is None:
            finite = np.asarray(jnp.isfinite(s) & (s > 0))
            n_exact = jnp.sum(jnp.where(finite, 0.0, w))
            return cls._of(s[finite], (w * b2)[finite], w[finite], n_exact)
        return cls.from_bins(*jax.jit(bin_modes, static_argnums=3)(s, b2, w, n_bins))

    @classmethod
    def from_bins(cls, s_weighted, wb2, wsum, n_exact) -> "DiagonalProblem":
        """From the output of :func:`bin_modes` (drops empty bins)."""
        keep = np.asarray(wsum) > 0
        s_weighted, wb2, wsum = (np.asarray(a, dtype=np.float64)[keep] for a in (s_weighted, wb2, wsum))
        return cls._of(s_weighted / wsum, wb2, wsum, n_exact)

    @classmethod
    def _of(cls, s, wb2, weights, n_exact):
        # The summary is small: evaluate the rules in float64 NumPy, where n - sum(phi)
        # does not cancel catastrophically as it would in float32 for n ~ 10^7.
        f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        return cls(f64(s), f64(wb2), f64(weights), float(n_exact))

    def filter_factors(self, alpha):
        s2 = self.s**2
        return s2 / (s2 + alpha)

    def norms(self, alpha):
        """(residual norm^2, solution norm^2, sum of filter factors incl. exact modes)."""
        phi = self.filter_factors(alpha)
        res = np.sum((1 - phi) ** 2 * self.wb2)
        sol = np.sum((self.s / (self.s**2 + alpha)) ** 2 * self.wb2)
        return res, sol, np.sum(self.weights * phi) + self.n_exact

    @property
    def n(self) -> float:
        return float(np.sum(self.weights) + self.n_exact)

    def alpha_range(self) -> tuple:
        """Search interval: spans the squared eigenvalues, widened by 10^4 below and 10^2 above."""
        s = np.asarray(self.s)
        if s.size == 0:
            raise ValueError("the problem has no finite non-zero eigenvalues to regularise")
        return float(np.min(s) ** 2 * 1e-4), float(np.max(s) ** 2 * 1e2)


def _gcv(problem: DiagonalProblem, log_alpha) -> float:
    res, _, tr = problem.norms(np.exp(log_alpha))
    n = problem.n
    return float(n * res / (n - tr) ** 2)


def choose_gcv(problem: DiagonalProblem, n_scan: int = 48) -> tuple[float, dict]:
    """Minimise GCV: a log-spaced scan, then Brent refinement around the best point."""
    lo, hi = np.log(problem.alpha_range())
    grid = np.linspace(lo, hi, n_scan)
    vals = np.array([_gcv(problem, g) for g in grid])
    i = int(np.nanargmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_scan - 1)]
    opt = minimize_scalar(lambda la: _gcv(problem, la), bounds=(a, b), method="bounded", options={"xatol": 1e-3})
    alpha = float(np.exp(opt.x))
    at_edge = i in (0, n_scan - 1)
    return alpha, {"rule": "gcv", "gcv_value": float(opt.fun), "at_search_edge": bool(at_edge)}


def choose_lcurve(problem: DiagonalProblem, n_scan: int = 200) -> tuple[float, dict]:
    """Corner of the L-curve: maximum curvature of (log ||r||, log ||x||) in log alpha."""
    lo, hi = np.log(problem.alpha_range())
    t = np.linspace(lo, hi, n_scan)
    norms = [problem.norms(np.exp(v)) for v in t]
    x = np.log([n[0] for n in norms])
    y = np.log([n[1] for n in norms])
    dx, dy = np.gradient(x, t), np.gradient(y, t)
    ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    kappa = (dx * ddy - ddx * dy) / np.maximum((dx**2 + dy**2) ** 1.5, 1e-300)
    kappa[~np.isfinite(kappa)] = -np.inf
    inner = slice(2, n_scan - 2)  # ignore one-sided differences at the ends
    i = int(np.argmax(kappa[inner])) + 2
    return float(np.exp(t[i])), {"rule": "lcurve", "curvature": float(kappa[i]), "at_search_edge": i in (2, n_scan - 3)}


def log_evidence(problem: DiagonalProblem, lam: float, noise_variance: float | None = None) -> tuple[float, float]:
    """Log marginal likelihood at ``lambda`` and the ``beta`` used (see module docstring)."""
    res, sol, _ = problem.norms(lam)
    m = float(np.sum(problem.weights))  # data and unknowns: the finite modes
    if noise_variance is None:
        beta = m / (res + lam * sol)
    else:
        beta = 1.0 / noise_variance
    logdet = float(np.sum(problem.weights * np.log(beta * (lam + problem.s**2))))
    value = 0.5 * m * np.log(beta) + 0.5 * m * np.log(lam * beta) - 0.5 * beta * (res + lam * sol) - 0.5 * logdet
    return float(value - 0.5 * m * np.log(2 * np.pi)), float(beta)


def choose_bayesian(problem: DiagonalProblem, noise_variance: float | None = None, n_scan: int = 48) -> tuple[float, dict]:
    """Maximise the Bayesian evidence over lambda: a log scan, then Brent refinement."""
    if noise_variance is not None and not (np.isfinite(noise_variance) and noise_variance > 0):
        raise ValueError(f"noise_variance must be > 0, got {noise_variance}")
    lo, hi = np.log(problem.alpha_range())
    neg = lambda la: -log_evidence(problem, float(np.exp(la)), noise_variance)[0]  # noqa: E731
    grid = np.linspace(lo, hi, n_scan)
    vals = np.array([neg(g) for g in grid])
    i = int(np.nanargmin(vals))
    opt = minimize_scalar(neg, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, n_scan - 1)]), method="bounded",
                          options={"xatol": 1e-4})
    lam = float(np.exp(opt.x))
    value, beta = log_evidence(problem, lam, noise_variance)
    return lam, {"rule": "bayesian", "log_evidence": value, "beta": beta, "noise_variance_given": noise_variance is not None,
                 "at_search_edge": i in (0, n_scan - 1)}


def parse(regularization):
    """The ``regularization`` argument of the force solvers: None when a rule (``"auto"``
    or one of :data:`RULES`) is to choose alpha, else the fixed alpha as a float >= 0."""
    if isinstance(regularization, str):
        if regularization not in ("auto",) + RULES:
            raise ValueError(f"regularization must be 'auto', one of {RULES} or a float >= 0, got {regularization!r}")
        return None
    if isinstance(regularization, (bool, np.bool_)) or regularization is None:
        raise ValueError(f"regularization must be 'auto', one of {RULES} or a float >= 0, got {regularization!r}")
    try:
        alpha = float(regularization)
    except (TypeError, ValueError):
        raise ValueError(f"regularization must be 'auto', one of {RULES} or a float >= 0, got {regularization!r}") from None
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"regularization must be a finite float >= 0, got {alpha}")
    return alpha


def choose(problem: DiagonalProblem, rule: str, noise_variance: float | None = None) -> tuple[float, dict]:
    """Pick alpha by ``rule`` in :data:`RULES` (``"auto"`` means GCV)."""
    if rule == "auto":
        rule = "gcv"
    if rule in RULES and not np.any(problem.wb2 > 0):  # no signal to fit (e.g. a zero field): nothing to damp
        return 0.0, {"rule": rule, "no_data": True, "at_search_edge": False}
    if rule == "gcv":
        return choose_gcv(problem)
    if rule == "lcurve":
        return choose_lcurve(problem)
    if rule == "bayesian":
        return choose_bayesian(problem, noise_variance)
    raise ValueError(f"regularization rule must be 'auto', one of {RULES} or a float >= 0, got {rule!r}")
