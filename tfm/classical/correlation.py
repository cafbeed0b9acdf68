"""Window correlation for DVC: zero-mean normalised cross-correlation of window pairs by
FFT, sub-voxel peaks, and the rigid shift between two whole volumes.

Per window pair ``(r, d)`` (zero-mean), ``c(s) = sum r(x) d(x + s) / (|r| |d|)`` for every
periodic lag ``s`` by FFT; the peak is searched within ``max_shift`` voxels along each
axis (the lags outside are never looked at, so only that block of ``c`` is kept) and
located to sub-voxel precision by a three-point Gaussian fit per axis (parabolic where a
sample is not positive). The peak value is the correlation coefficient (``quality``).

Within one pass of window deformation the reference windows do not change: their spectra
and norms are computed once (:func:`reference_spectra`) and reused by every iteration,
within a memory budget.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

SPECTRA_BUDGET_BYTES = 768 << 20  # cache reference spectra of a pass up to this size


def gauss_peak(cm, c0, cp):
    """Sub-sample offset of a peak from three samples (Gaussian fit; parabolic fallback)."""
    ok = (cm > 0) & (c0 > 0) & (cp > 0)
    lm, l0, lp = (jnp.log(jnp.where(ok, v, 1.0)) for v in (cm, c0, cp))
    den_g = lm - 2 * l0 + lp
    gauss = jnp.where(den_g < 0, 0.5 * (lm - lp) / jnp.where(den_g < 0, den_g, -1.0), 0.0)
    den_p = cm - 2 * c0 + cp
    parab = jnp.where(den_p < 0, 0.5 * (cm - cp) / jnp.where(den_p < 0, den_p, -1.0), 0.0)
    return jnp.clip(jnp.where(ok, gauss, parab), -0.5, 0.5)


def periodic_peak(corr, flat_index):
    """Peak position (signed shifts, sub-voxel) of periodic correlation volumes (B, Z, Y, X)."""
    shape = corr.shape[1:]
    idx = jnp.stack(jnp.unravel_index(flat_index, shape), -1)  # (B, 3)
    b = jnp.arange(corr.shape[0])
    shifts = []
    for a in range(3):
        n = shape[a]
        at = [idx[:, 0], idx[:, 1], idx[:, 2]]
        vals = []
        for d in (-1, 0, 1):
            q = list(at)
            q[a] = (at[a] + d) % n
            vals.append(corr[b, q[0], q[1], q[2]])
        i = idx[:, a]
        shifts.append(jnp.where(i > n // 2, i - n, i) + gauss_peak(*vals))
    return jnp.stack(shifts, -1)


def _windows(v, starts, window):
    w = jax.vmap(lambda s: jax.lax.dynamic_slice(v, s, window))(starts)
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    return w, jnp.sqrt(jnp.sum(w * w, axis=(1, 2, 3)))


@partial(jax.jit, static_argnums=(2,))
def reference_spectra(ref, starts, window):
    """Spectra (B, ...) and norms (B,) of the zero-mean reference windows at ``starts``."""
    r, er = _windows(ref, starts, window)
    return jnp.conj(jnp.fft.rfftn(r, axes=(1, 2, 3))), er


def _lags(n: int, m: int) -> np.ndarray:
    """Periodic indices of the lags -m-1 ... m+1 of an axis of length n (or all of a short axis)."""
    if 2 * m + 3 > n:
        return None
    return np.arange(-m - 1, m + 2) % n


@partial(jax.jit, static_argnums=(4, 5))
def correlate_windows(ref_spec, er, warped, starts, window, max_shift):
    """Shift (B, 3), correlation peak (B,) and contrast (B,) of the windows at ``starts``."""
    d, ed = _windows(warped, starts, window)
    corr = jnp.fft.irfftn(ref_spec * jnp.fft.rfftn(d, axes=(1, 2, 3)), s=window, axes=(1, 2, 3))
    corr = corr / jnp.maximum(er * ed, 1e-12)[:, None, None, None]
    lags = [_lags(n, m) for n, m in zip(window, max_shift)]
    if any(lag is None for lag in lags):  # a short axis: search the periodic volume
        lim = []
        for a, n in enumerate(window):
            i = jnp.arange(n)
            shape = [1, 1, 1]
            shape[a] = n
            lim.append((jnp.minimum(i, n - i) <= max_shift[a]).reshape(shape))
        masked = jnp.where((lim[0] & lim[1] & lim[2])[None], corr, -2.0).reshape(corr.shape[0], -1)
        peak = jnp.argmax(masked, axis=1)
        return periodic_peak(corr, peak), jnp.take_along_axis(masked, peak[:, None], 1)[:, 0], jnp.minimum(er, ed)
    for a, lag in enumerate(lags):  # keep the searched block and one lag around it
        corr = jnp.take(corr, jnp.asarray(lag), axis=a + 1)
    inner = corr[:, 1:-1, 1:-1, 1:-1]
    b = corr.shape[0]
    peak = jnp.argmax(inner.reshape(b, -1), axis=1)
    idx = jnp.stack(jnp.unravel_index(peak, inner.shape[1:]), -1) + 1  # in the kept block
    rows = jnp.arange(b)
    shifts = []
    for a, m in enumerate(max_shift):
        vals = []
        for s in (-1, 0, 1):
            q = [idx[:, 0], idx[:, 1], idx[:, 2]]
            q[a] = q[a] + s
            vals.append(corr[rows, q[0], q[1], q[2]])
        shifts.append(idx[:, a] - (m + 1) + gauss_peak(*vals))
    quality = corr[rows, idx[:, 0], idx[:, 1], idx[:, 2]]
    return jnp.stack(shifts, -1), quality, jnp.minimum(er, ed)


class WindowPass:
    """The reference windows of one pass (their spectra cached within a memory budget);
    :meth:`correlate` correlates them with a warped volume."""

    def __init__(self, ref, starts: np.ndarray, window: tuple, max_shift: tuple, batch: int):
        self.ref, self.window, self.max_shift = ref, tuple(window), tuple(max_shift)
        n = len(starts)
        self.batch = min(batch, n)
        pad = (-n) % self.batch
        self.n = n
        self.starts = jnp.asarray(np.concatenate([starts, np.repeat(starts[-1:], pad, 0)]) if pad else starts)
        spectrum = int(np.prod(window[:-1])) * (window[-1] // 2 + 1) * 8
        self.cache = None
        if spectrum * len(self.starts) <= SPECTRA_BUDGET_BYTES:
            self.cache = [reference_spectra(ref, self.starts[s : s + self.batch], self.window)
                          for s in range(0, len(self.starts), self.batch)]

    def correlate(self, warped):
        """``(shift (n, 3), quality (n,), contrast (n,))`` of every window, NumPy."""
        out = []
        for i, s in enumerate(range(0, len(self.starts), self.batch)):
            chunk = self.starts[s : s + self.batch]
            spec, er = self.cache[i] if self.cache is not None else reference_spectra(self.ref, chunk, self.window)
            out.append(correlate_windows(spec, er, warped, chunk, self.window, self.max_shift))
        return tuple(np.concatenate([np.asarray(o[k]) for o in out])[: self.n] for k in range(3))


def _gauss_kernel_ft(shape, sigma):
    ks = [2 * np.pi * np.fft.fftfreq(n) for n in shape[:-1]] + [2 * np.pi * np.fft.rfftfreq(shape[-1])]
    kz, ky, kx = np.meshgrid(*ks, indexing="ij")
    return jnp.asarray(np.exp(-0.5 * sigma**2 * (kz**2 + ky**2 + kx**2)), jnp.float32)


def _phase(shape, shift):
    """``exp(i k . shift)`` on the rFFT grid of ``shape``: multiplying a spectrum by it
    samples the volume at ``x + shift`` (exactly for a band-limited volume; periodic)."""
    ks = [2 * np.pi * np.fft.fftfreq(n) for n in shape[:-1]] + [2 * np.pi * np.fft.rfftfreq(shape[-1])]
    phase = sum(np.reshape(k * s, [-1 if a == i else 1 for i in range(3)]) for a, (k, s) in enumerate(zip(ks, shift)))
    return jnp.asarray(np.exp(1j * phase), jnp.complex64)


@jax.jit
def _phase_correlation(r, d, kernel_ft):
    """The phase-correlation peak (sub-voxel, signed) of two volumes and the deformed one's
    spectrum (one compiled call: on small volumes the eager operations cost more than the FFTs)."""
    dh = jnp.fft.rfftn(d)
    cross = jnp.conj(jnp.fft.rfftn(r)) * dh
    corr = jnp.fft.irfftn(cross / jnp.maximum(jnp.abs(cross), 1e-12), s=r.shape)
    # Smooth the sharp phase-correlation peak slightly so the 3-point fit is well posed.
    corr = jnp.fft.irfftn(jnp.fft.rfftn(corr) * kernel_ft, s=r.shape)
    return periodic_peak(corr[None], jnp.argmax(corr.ravel())[None])[0], dh


def rigid_shift(reference, deformed, refinements: int = 2) -> np.ndarray:
    """Global translation (voxels, (z, y, x)) of ``deformed`` relative to ``reference``.

    Phase correlation of the whole volumes gives a first estimate; it is refined by
    shifting ``deformed`` back by the estimate (exactly, in Fourier space) and
    correlating a central crop that excludes the margins the shift moved (and the
    periodic wrap), where the (now near-zero) peak has no estimator bias.
    """
    r = jnp.asarray(reference, jnp.float32)
    d = jnp.asarray(deformed, jnp.float32)
    first, dh = _phase_correlation(r, d, _gauss_kernel_ft(r.shape, 0.7))
    shift = np.asarray(first, dtype=np.float64)
    for _ in range(refinements):
        margin = tuple(0 if n == 1 else max(0, min(int(np.ceil(abs(s))) + 4, (n - 8) // 2)) for s, n in zip(shift, r.shape))
        window = tuple(n - 2 * m for n, m in zip(r.shape, margin))
        if min(w for w, n in zip(window, r.shape) if n > 1) < 8:
            break
        starts = jnp.asarray([margin], jnp.int32)
        spec, er = reference_spectra(r, starts, window)
        back = jnp.fft.irfftn(dh * _phase(r.shape, shift), s=r.shape)
        res, _, _ = correlate_windows(spec, er, back, starts, window, (2, 2, 2))
        shift = shift + np.asarray(res[0], dtype=np.float64)
    return shift
