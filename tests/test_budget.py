"""The Budget with an injected clock: progress, pauses, the deadline, resume, ramp, curriculum, early stop."""

import math

import pytest
from pydantic import ValidationError

from pretrain_bench import config
from pretrain_bench.errors import UserError
from pretrain_bench.train.budget import Budget, BudgetConfig
from tests.conftest import REPO


class Clock:
    """A clock that moves only when told to: no test waits for real time."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def timed(minutes=3.0, clock=None, max_steps=None, **settings):
    clock = clock or Clock(1000.0)
    return Budget(BudgetConfig(minutes=minutes, **settings), max_steps, clock), clock


def test_modes_and_exactly_one_budget():
    assert BudgetConfig(hours=2).seconds == 7200 and BudgetConfig(hours=2).mode == "time"
    assert BudgetConfig(minutes=3).seconds == 180
    assert BudgetConfig(tokens=10).mode == "tokens" and BudgetConfig().mode == "steps"
    with pytest.raises(ValidationError, match="give one of hours, minutes, tokens, not hours and minutes"):
        BudgetConfig(hours=1, minutes=30)
    with pytest.raises(ValidationError, match="increasing 'until'"):
        BudgetConfig(tokens=10, seq_len_curriculum=[{"until": 0.5, "seq_len": 32}, {"until": 0.3, "seq_len": 64}])
    with pytest.raises(ValidationError, match="less than 1"):  # a last stage until 1 would never train at full length
        BudgetConfig(tokens=10, seq_len_curriculum=[{"until": 1.0, "seq_len": 32}])


def test_progress_counts_running_time_only():
    budget, clock = timed(minutes=3)
    clock.advance(50)  # before start: building the engine, preparing data
    assert budget.progress() == 0
    budget.start()
    clock.advance(60)
    with budget.paused():  # evaluation, checkpoints, export
        clock.advance(1000)
        assert budget.training_seconds() == 60
    clock.advance(30)
    assert budget.training_seconds() == 90 and budget.progress() == pytest.approx(0.5)
    budget.stop()
    clock.advance(500)
    assert budget.training_seconds() == 90
    with budget.paused():  # pausing a stopped clock leaves it stopped
        pass
    clock.advance(10)
    assert budget.training_seconds() == 90


def test_deadline_at_exactly_the_budget_and_the_step_cap():
    budget, clock = timed(minutes=1, max_steps=5)
    budget.start()
    clock.advance(59.999)
    assert not budget.exhausted()
    clock.advance(0.001)
    assert budget.exhausted() and not budget.capped()
    budget, clock = timed(minutes=1, max_steps=5)
    budget.steps = 5
    assert budget.capped() and budget.exhausted() and budget.progress() == 0


def test_token_and_step_progress():
    budget = Budget(BudgetConfig(tokens=1000), None, Clock())
    budget.tokens = 250
    assert budget.progress() == 0.25 and not budget.exhausted()
    budget.tokens = 1000
    assert budget.exhausted()
    budget = Budget(BudgetConfig(), 40, Clock())
    budget.steps = 10
    assert budget.progress() == 0.25


def test_resume_restores_the_clock_and_skips_the_time_down():
    budget, clock = timed(minutes=10)
    budget.start()
    clock.advance(120)
    budget.tokens, budget.steps = 5000, 42
    with budget.paused():  # checkpoints are saved with the clock paused
        state = budget.state_dict()
    assert state == {"elapsed_s": 120, "tokens": 5000, "steps": 42}
    # a new process, hours later, on a clock with another origin
    resumed, later = timed(minutes=10, clock=Clock(clock.t + 7 * 3600))
    resumed.load_state_dict(state)
    assert resumed.progress() == pytest.approx(0.2) and (resumed.tokens, resumed.steps) == (5000, 42)
    resumed.start()
    later.advance(30)
    assert resumed.training_seconds() == 150 and resumed.progress() == pytest.approx(0.25)


def test_ranks_adopt_an_agreed_clock_while_running():
    budget, clock = timed()
    budget.start()
    clock.advance(10)
    budget.set_training_seconds(12.5)
    assert budget.training_seconds() == 12.5
    clock.advance(1)
    assert budget.training_seconds() == 13.5


def test_batch_size_ramp_grows_accumulation_to_the_full_batch():
    budget, _ = timed(batch_size_ramp=0.5)
    assert [budget.grad_accum_steps(8, p) for p in (0, 0.07, 0.0715, 0.25, 0.49, 0.5, 0.9)] == [1, 1, 2, 4, 7, 8, 8]
    assert budget.grad_accum_steps(1, 0.0) == 1
    flat, _ = timed(batch_size_ramp=0.0)
    assert flat.grad_accum_steps(8, 0.0) == 8


def test_ramp_follows_the_clock_when_no_progress_is_given():
    budget, clock = timed(minutes=1, batch_size_ramp=0.6)
    budget.start()
    clock.advance(18)  # progress 0.3: half of the ramp
    assert budget.grad_accum_steps(64) == 1 + math.floor(63 * 0.5)


def test_sequence_length_curriculum():
    budget, _ = timed(seq_len_curriculum=[{"until": 0.2, "seq_len": 16}, {"until": 0.5, "seq_len": 32}])
    assert [budget.seq_len(64, p) for p in (0.0, 0.19, 0.2, 0.49, 0.5, 1.0)] == [16, 16, 32, 32, 64, 64]


def test_early_termination_rule():
    budget, clock = timed(minutes=1, early_stop={"at": 0.25, "loss_above": 6.0})
    budget.start()
    clock.advance(14)
    assert budget.diverged(9.0, budget.progress()) is None  # too early to judge
    clock.advance(1)
    assert budget.diverged(5.9, budget.progress()) is None
    message = budget.diverged(7.25, budget.progress())
    assert "7.250 is above budget.early_stop.loss_above=6.0 at 25% of the budget" in message
    assert "lower train.lr" in message
    assert budget.diverged(float("nan"), budget.progress()) is not None  # a NaN loss is divergence too


def test_config_problems_name_the_field(tmp_path):
    def load(*overrides):
        return config.load(REPO / "configs" / "tiny-cpu.yaml", [f"run_dir={tmp_path}", *overrides])

    with pytest.raises(UserError, match="batch_size_ramp grows accumulation .* raise train.grad_accum_steps"):
        load("budget.minutes=1", "budget.batch_size_ramp=0.5")
    with pytest.raises(UserError, match="neither train.max_steps nor a budget is set"):
        load("train.max_steps=null")
    cfg = load("budget.tokens=5000", "train.max_steps=null")
    assert cfg.budget.describe(cfg.train.max_steps) == "5,000 tokens"

