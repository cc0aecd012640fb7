"""The helpers every layer shares (dgmlab.utils): validation messages, the device of a module, evaluation
mode for a block, and the worker pool's in-process fallback."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from dgmlab.errors import ModelConfigError
from dgmlab.utils import (
    check_int,
    check_positive_number,
    check_widths,
    cpu_threads,
    device_of,
    eval_mode,
    is_int,
    run_in_processes,
)


def test_integers_are_checked_with_one_message():
    assert check_int(np.int64(3), "n", minimum=1) == 3 and is_int(np.int32(2)) and not is_int(True)
    with pytest.raises(ModelConfigError, match=r"^MADE: num_masks must be a positive integer, got 0$"):
        check_int(0, "num_masks", minimum=1, owner="MADE", error=ModelConfigError)
    with pytest.raises(ValueError, match=r"k must be an integer >= 0 \(a count\), got 2.5"):
        check_int(2.5, "k", minimum=0, hint="a count")
    with pytest.raises(ValueError, match="must be a positive integer, got True"):
        check_int(True, "n", minimum=1)


def test_positive_numbers_and_widths():
    assert check_positive_number(2, "scale") == 2.0 and check_positive_number(np.float32(0.5), "scale") == 0.5
    for bad in (0, -1.0, float("inf"), float("nan"), True, "2"):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            check_positive_number(bad, "scale")
    assert check_widths((64, np.int64(32))) == [64, 32]
    for bad in ([], [8, 0], 8, "64", [8, 2.0]):
        with pytest.raises(ModelConfigError, match=r"^MAF: hidden_dims must be a non-empty list of positive integer"):
            check_widths(bad, owner="MAF", error=ModelConfigError)


def test_device_of_and_eval_mode_restore_each_submodule():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    assert device_of(model) == torch.device("cpu") and device_of(nn.ReLU()) == torch.device("cpu")
    model.train()
    model[2].eval()  # a submodule its owner froze
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert model.training and model[1].training and not model[2].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("the modes come back even when the block fails")
    assert model.training and not model[2].training


PARENT = os.getpid()


def _square_or_die(value: int) -> int:
    if value == 3 and os.environ.get("DGMLAB_TEST_KILL_WORKER") == "1" and os.getpid() != PARENT:
        os._exit(1)  # a worker process dying breaks the pool (never this process, where the fallback runs)
    return value * value


def test_worker_pool_gives_results_in_order_and_falls_back_in_process(monkeypatch):
    seen = []
    assert run_in_processes(_square_or_die, [(v,) for v in range(5)], workers=1,
                            on_result=lambda i, r: seen.append((i, r))) == [0, 1, 4, 9, 16]
    assert seen == [(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)]
    assert run_in_processes(_square_or_die, [(v,) for v in range(5)], workers=2) == [0, 1, 4, 9, 16]
    monkeypatch.setenv("DGMLAB_TEST_KILL_WORKER", "1")
    with pytest.warns(RuntimeWarning, match="test pool: a worker process died"):
        results = run_in_processes(_square_or_die, [(v,) for v in range(5)], workers=2, what="test pool")
    assert results == [0, 1, 4, 9, 16]  # what the broken pool did not finish ran here


def test_cpu_threads_limits_the_block_and_restores_the_caller_s_number():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("the number is restored on an error too")
    assert torch.get_num_threads() == before
    with cpu_threads(1, torch.device("cuda")):  # another device: the CPU threads are left alone
        assert torch.get_num_threads() == before
