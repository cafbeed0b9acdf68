"""Shared test set-up: a persistent JAX compilation cache and float64 on demand."""

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


@contextlib.contextmanager
def _x64():
    """float64 for one block, on jax 0.10 (jax.experimental.enable_x64) and >= 0.11 (jax.enable_x64)."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
    else:  # pragma: no cover - older jax
        from jax.experimental import enable_x64

        with enable_x64():
            yield


@pytest.fixture
def x64():
    with _x64():
        yield


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (checkout without ../shared)")
    return SHARED_DATA
