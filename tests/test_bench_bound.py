"""bench/step_cost.py's `bound`: a case's FLOPs timed at the plain step's speed for each op."""

from types import SimpleNamespace

import pytest

from bench import step_cost


def test_bound_weights_each_op_by_its_plain_speed():
    # plain: convolutions at 100 GFLOP/s, attention at 50
    plain = SimpleNamespace(flops_per_op={"aten.convolution": 100e9, "aten.sdpa": 50e9},
                            seconds_per_op={"aten.convolution": 1.0, "aten.sdpa": 1.0, "aten.gelu": 0.3})
    # twice the attention: 1.33x the FLOPs, but 1.5x the time at the plain step's speeds
    case = SimpleNamespace(flops_per_op={"aten.convolution": 100e9, "aten.sdpa": 100e9})
    assert step_cost.speed_bound(case, plain) == pytest.approx(1.5)
    # an op the plain step never ran is timed at the plain step's average speed (150 GFLOP in 2 s)
    extra = SimpleNamespace(flops_per_op={"aten.convolution": 100e9, "aten.sdpa": 50e9, "aten.bmm": 75e9})
    assert step_cost.speed_bound(extra, plain) == pytest.approx(1.5)
    assert step_cost.speed_bound(plain, plain) == pytest.approx(1.0)
