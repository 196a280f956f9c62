"""Learning-rate shapes as pure functions of progress: values at known fractions, and shape properties."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from pretrain_bench.train.schedules import ScheduleConfig, lr_factor

# (settings, [(progress, expected multiplier of the peak)])
KNOWN = {
    "linear": (dict(shape="linear", warmup=0.1),
               [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.55, 0.5), (0.82, 0.2), (1.0, 0.0)]),
    "linear_floor": (dict(shape="linear", warmup=0.1, floor=0.1),
                     [(0.1, 1.0), (0.55, 0.55), (1.0, 0.1)]),
    "cosine": (dict(shape="cosine", warmup=0.1),
               [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.325, (1 + math.cos(math.pi / 4)) / 2), (0.55, 0.5), (1.0, 0.0)]),
    "cosine_floor": (dict(shape="cosine", warmup=0.1, floor=0.2), [(0.55, 0.6), (1.0, 0.2)]),
    # cramming's budget-triangle2: 0.25 -> 1 at 75% -> 0
    "triangular": (dict(shape="triangular", warmup=0.75),
                   [(0.0, 0.25), (0.375, 0.625), (0.75, 1.0), (0.875, 0.5), (1.0, 0.0)]),
    "one_cycle": (dict(shape="one_cycle", warmup=0.3),
                  [(0.0, 0.04), (0.15, 0.52), (0.3, 1.0), (0.65, 0.5), (1.0, 0.0)]),
    "constant": (dict(shape="constant", warmup=0.1),
                 [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.5, 1.0), (1.0, 1.0)]),
    "constant_cooldown": (dict(shape="constant", warmup=0.1, cooldown=0.2, floor=0.1),
                          [(0.5, 1.0), (0.8, 1.0), (0.9, 0.55), (1.0, 0.1)]),
    "start_override": (dict(shape="linear", warmup=0.2, start=0.5), [(0.0, 0.5), (0.1, 0.75), (0.2, 1.0)]),
    "no_warmup": (dict(shape="linear", warmup=0.0), [(0.0, 1.0), (0.5, 0.5)]),
}


@pytest.mark.parametrize("name", KNOWN)
def test_values_at_known_fractions(name):
    settings, points = KNOWN[name]
    cfg = ScheduleConfig(**settings)
    for progress, expected in points:
        assert lr_factor(progress, cfg) == pytest.approx(expected, abs=1e-12), (name, progress)


def test_triangular_is_crammings_budget_triangle2():
    cfg = ScheduleConfig(shape="triangular", warmup=0.75)
    for p in np.linspace(0, 1, 401):
        assert lr_factor(p, cfg) == pytest.approx(min(0.25 + p, 4 * (1 - p)), abs=1e-12)


SHAPES = [dict(shape="linear", warmup=0.06, floor=0.1), dict(shape="cosine", warmup=0.1, floor=0.05),
          dict(shape="triangular", warmup=0.75, floor=0.0), dict(shape="one_cycle", warmup=0.3, floor=0.02),
          dict(shape="constant", warmup=0.1, cooldown=0.3, floor=0.1)]


@pytest.mark.parametrize("settings", SHAPES, ids=[s["shape"] for s in SHAPES])
def test_shape_properties(settings):
    cfg = ScheduleConfig(**settings)
    grid = np.linspace(0, 1, 2001)
    values = np.array([lr_factor(p, cfg) for p in grid])
    assert values.min() >= 0 and values.max() <= 1 + 1e-12
    assert lr_factor(cfg.warmup, cfg) == pytest.approx(1.0)  # the peak
    assert values[-1] == pytest.approx(cfg.floor)  # ends on the floor
    rising, falling = values[grid <= cfg.warmup], values[grid >= cfg.warmup]
    assert np.all(np.diff(rising) >= -1e-12) and np.all(np.diff(falling) <= 1e-12)
    assert np.abs(np.diff(values)).max() < 0.01  # continuous: no jump anywhere, warm-up end included
    assert lr_factor(-0.5, cfg) == lr_factor(0.0, cfg) and lr_factor(1.7, cfg) == lr_factor(1.0, cfg)


@pytest.mark.parametrize("settings, message", [
    (dict(shape="cosine", cooldown=0.1), "cooldown applies to shape 'constant' only"),
    (dict(shape="constant", warmup=0.6, cooldown=0.5), "warmup \\+ cooldown exceed 1"),
    (dict(shape="constant", floor=0.1), "reaches its floor only through a cooldown"),
    (dict(shape="linear", warmup=1.0), "less than 1"),
    (dict(shape="linear", start=1.5), "less than or equal to 1"),
])
def test_contradictions_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        ScheduleConfig(**settings)
