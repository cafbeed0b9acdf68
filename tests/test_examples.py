"""The demo runs end to end and its reconstruction matches the known contractility."""

import json
import runpy
import sys

import pytest

from conftest import ROOT


def test_demo_writes_all_outputs_and_recovers_contractility(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["demo.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "examples" / "demo.py"), run_name="__main__")
    assert e.value.code == 0
    for name in ("result.h5", "result.vti", "slices.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 500, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert abs(summary["contractility_error"]) < 0.02
    assert summary["regularization_rule"] == "gcv" and summary["alpha"] > 0
