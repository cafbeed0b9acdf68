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

``weights`` count how many real degrees of freedom each entry stands for (2 for a
complex coefficient of a real FFT that also stands for its conjugate, 1 otherwise); an
entry with ``s = inf`` (the k = 0 mode of an infinite medium) is fitted exactly and
carries no solution.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar

RULES = ("gcv", "lcurve")


@dataclasses.dataclass(frozen=True)
class DiagonalProblem:
    """A Tikhonov problem diagonal in some basis.

    Attributes:
      s: eigenvalues of the forward operator (>= 0; ``inf`` for modes fitted exactly).
      b2: squared magnitude of the data projected on each mode.
      weights: real degrees of freedom each entry stands for.
    """

    s: jax.Array
    b2: jax.Array
    weights: jax.Array

    def filter_factors(self, alpha):
        s2 = self.s**2
        return jnp.where(jnp.isinf(self.s), 1.0, s2 / (s2 + alpha))

    def norms(self, alpha):
        """(residual norm^2, solution norm^2, sum of filter factors) at ``alpha``."""
        phi = self.filter_factors(alpha)
        res = jnp.sum(self.weights * (1 - phi) ** 2 * self.b2)
        gain = jnp.where(jnp.isinf(self.s), 0.0, self.s / (self.s**2 + alpha))
        sol = jnp.sum(self.weights * gain**2 * self.b2)
        return res, sol, jnp.sum(self.weights * phi)

    @property
    def n(self):
        return jnp.sum(self.weights)

    def alpha_range(self) -> tuple:
        """Search interval: spans the squared eigenvalues of the finite modes, widened."""
        s = np.asarray(self.s)
        s = s[np.isfinite(s) & (s > 0)]
        if s.size == 0:
            raise ValueError("the problem has no finite non-zero eigenvalues to regularise")
        return float(np.min(s) ** 2 * 1e-4), float(np.max(s) ** 2 * 1e2)


@jax.jit
def _gcv(problem: DiagonalProblem, log_alpha):
    res, _, tr = problem.norms(jnp.exp(log_alpha))
    n = problem.n
    return n * res / (n - tr) ** 2


@jax.jit
def _lcurve_points(problem: DiagonalProblem, log_alphas):
    def one(la):
        res, sol, _ = problem.norms(jnp.exp(la))
        return jnp.log(res), jnp.log(sol)

    return jax.lax.map(one, log_alphas)


jax.tree_util.register_dataclass(DiagonalProblem, data_fields=["s", "b2", "weights"], meta_fields=[])


def gcv_curve(problem: DiagonalProblem, alphas) -> np.ndarray:
    """GCV function ``V(alpha)`` at each of ``alphas``."""
    return np.array([float(_gcv(problem, np.log(a))) for a in np.asarray(alphas).ravel()])


def choose_gcv(problem: DiagonalProblem, n_scan: int = 48) -> tuple[float, dict]:
    """Minimise GCV: a log-spaced scan, then Brent refinement around the best point."""
    lo, hi = np.log(problem.alpha_range())
    grid = np.linspace(lo, hi, n_scan)
    vals = np.array([float(_gcv(problem, g)) for g in grid])
    i = int(np.nanargmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_scan - 1)]
    opt = minimize_scalar(lambda la: float(_gcv(problem, la)), bounds=(a, b), method="bounded", options={"xatol": 1e-3})
    alpha = float(np.exp(opt.x))
    at_edge = i in (0, n_scan - 1)
    return alpha, {"rule": "gcv", "gcv_value": float(opt.fun), "at_search_edge": bool(at_edge)}


def choose_lcurve(problem: DiagonalProblem, n_scan: int = 200) -> tuple[float, dict]:
    """Corner of the L-curve: maximum curvature of (log ||r||, log ||x||) in log alpha."""
    lo, hi = np.log(problem.alpha_range())
    t = np.linspace(lo, hi, n_scan)
    x, y = (np.asarray(v, dtype=float) for v in _lcurve_points(problem, jnp.asarray(t)))
    dx, dy = np.gradient(x, t), np.gradient(y, t)
    ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    kappa = (dx * ddy - ddx * dy) / np.maximum((dx**2 + dy**2) ** 1.5, 1e-300)
    kappa[~np.isfinite(kappa)] = -np.inf
    inner = slice(2, n_scan - 2)  # ignore one-sided differences at the ends
    i = int(np.argmax(kappa[inner])) + 2
    return float(np.exp(t[i])), {"rule": "lcurve", "curvature": float(kappa[i]), "at_search_edge": i in (2, n_scan - 3)}


def choose(problem: DiagonalProblem, rule: str) -> tuple[float, dict]:
    """Pick alpha by ``rule`` in :data:`RULES` (``"auto"`` means GCV)."""
    if rule == "auto":
        rule = "gcv"
    if rule == "gcv":
        return choose_gcv(problem)
    if rule == "lcurve":
        return choose_lcurve(problem)
    raise ValueError(f"regularization rule must be 'auto', one of {RULES} or a float >= 0, got {rule!r}")
