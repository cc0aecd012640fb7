"""The autoregressive-likelihood benchmark runs end to end with tiny settings and writes its result files.

The benchmark's numbers come from long runs (see the README); this only guards the script against rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ar_benchmark_smoke_run_writes_a_result_per_model(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "ar_mnist_nll.py"), "--models", "fvsbn,made",
               "--epochs", "1", "--train-limit", "512", "--eval-limit", "100", "--sampling", "2",
               "--made-hidden", "32,32", "--threads", "1", "--device", "cpu", "--precision", "bf16",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("fvsbn", "made"):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert result["epochs"] == 1 and result["test_images"] == 100 and result["precision"] == "bf16"
        # exact NLL in nats: below coin flips (543.4) after one short epoch from the data-mean start
        assert 0 < result["test_nll_nats"] < 784 * math.log(2)
        assert (tmp_path / name / "samples.png").read_bytes()[:4] == b"\x89PNG"
    made = json.loads((tmp_path / "made" / "result.json").read_text())
    assert made["sampling_images_per_second"]["gain"] > 0  # reuse vs a full pass per step, same samples
    assert made["parameters"] == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 784 + 784 + 784 * 784  # direct: D^2
    assert "made: test NLL" in done.stdout and "target <= 88.0" in done.stdout
