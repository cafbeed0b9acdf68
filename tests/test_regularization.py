"""Parameter choice on diagonal Tikhonov problems with a known truth."""

import numpy as np
import pytest

from tfm.classical import regularization as reg


def problem(seed=0, n=20000, sigma=1e-2):
    """Decaying singular values, smooth truth, white noise: b = s x + e."""
    rng = np.random.default_rng(seed)
    s = np.logspace(0, -4, n)
    x = rng.standard_normal(n) * np.logspace(0, -1, n)
    b = s * x + sigma * rng.standard_normal(n)
    return s, x, b


def error(s, x, b, alpha):
    return np.linalg.norm(s / (s**2 + alpha) * b - x)


@pytest.mark.parametrize("rule", ["gcv", "lcurve"])
def test_rules_land_near_the_best_alpha(rule):
    s, x, b = problem()
    p = reg.DiagonalProblem.from_modes(s, b**2, np.ones_like(s))
    alpha, info = reg.choose(p, rule)
    grid = np.logspace(-12, 1, 300)
    best = min(error(s, x, b, a) for a in grid)
    assert info["rule"] == rule and not info["at_search_edge"]
    assert error(s, x, b, alpha) < (1.25 if rule == "gcv" else 2.0) * best


def test_binned_summary_matches_exact_modes():
    s, x, b = problem(1)
    s = np.concatenate([s, [np.inf]])  # an exactly fitted mode (k = 0)
    b = np.concatenate([b, [3.0]])
    w = np.ones_like(s)
    exact = reg.DiagonalProblem.from_modes(s, b**2, w, n_bins=None)
    binned = reg.DiagonalProblem.from_modes(s, b**2, w, n_bins=8192)
    assert exact.n == binned.n == s.size
    a_exact, _ = reg.choose_gcv(exact)
    a_binned, _ = reg.choose_gcv(binned)
    assert a_binned == pytest.approx(a_exact, rel=0.02)
    for a in (1e-8, 1e-5, 1e-2):
        assert np.allclose(binned.norms(a), exact.norms(a), rtol=2e-3)


def test_unknown_rule_is_refused():
    s, _, b = problem(n=100)
    with pytest.raises(ValueError, match="regularization"):
        reg.choose(reg.DiagonalProblem.from_modes(s, b**2, np.ones_like(s)), "bayes-magic")


@pytest.mark.parametrize("known_noise", [True, False])
def test_bayesian_evidence_lands_near_the_best_alpha_and_estimates_the_noise(known_noise):
    sigma = 1e-2
    s, x, b = problem(seed=2, sigma=sigma)
    p = reg.DiagonalProblem.from_modes(s, b**2, np.ones_like(s))
    lam, info = reg.choose(p, "bayesian", noise_variance=sigma**2 if known_noise else None)
    grid = np.logspace(-12, 1, 300)
    best = min(error(s, x, b, a) for a in grid)
    assert info["rule"] == "bayesian" and not info["at_search_edge"]
    assert error(s, x, b, lam) < 1.5 * best
    assert 1 / info["beta"] == pytest.approx(sigma**2, rel=0.1)  # given, or estimated from the data
