"""The training loop with a fake engine: which clock reading its decisions follow."""

from types import SimpleNamespace

import pytest
import torch

from pretrain_bench import config
from pretrain_bench.train.budget import Budget
from pretrain_bench.train.loop import LoopState, Trainer
from pretrain_bench.train.schedules import lr_factor
from pretrain_bench.train.tracker import Tracker


class TickingClock:
    """A clock that moves on every reading, as a real one does between two reads on a busy rank."""

    def __init__(self, tick: float):
        self.t, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


class FakeEngine:
    """The few DeepSpeed engine calls the loop makes; records the learning rate of every optimizer step."""

    device = torch.device("cpu")

    def __init__(self):
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
        self.step_lrs = []

    def __call__(self, **inputs):
        return {"loss": torch.tensor(1.0)}

    def step(self):
        self.step_lrs.append(self.optimizer.param_groups[0]["lr"])

    backward = set_gradient_accumulation_boundary = set_train_batch_size = staticmethod(lambda *a: None)
    gradient_accumulation_steps = staticmethod(lambda: 1)
    was_step_applied = staticmethod(lambda: True)
    get_global_grad_norm = staticmethod(lambda: 0.0)


def test_every_rank_decides_from_the_clock_the_ranks_agreed_on(tmp_path):
    """Two ranks whose clocks differ agree on their mean after every micro-batch. The learning rate and the
    stop must follow that agreed reading, not the rank's own clock read again later: a rank that stopped
    alone would leave the other waiting in a collective."""
    cfg = config.validate({"run_dir": str(tmp_path), "budget": {"minutes": 1},
                           "train": {"lr": 1.0, "eval_at": [], "checkpoint_every_minutes": None, "log_every": 7}},
                          "test")
    budget = Budget(cfg.budget, None, TickingClock(tick=0.37))
    agreed = []

    def all_reduce(shared: torch.Tensor) -> None:
        if shared.dtype == torch.float64:  # the loop's agreement: tokens, signal, clock
            shared[2] = shared[2] + (shared[2] + 0.5)  # the other rank's clock runs half a second ahead
            agreed.append(shared[2].item() / 2)
        shared.mul_(1 if shared.dtype == torch.float64 else 2)

    def make_batches(seq_len, start):
        return iter(lambda: ({"input_ids": torch.zeros(1, seq_len, dtype=torch.long)}, 100), None)

    engine = FakeEngine()
    trainer = Trainer(cfg=cfg, engine=engine, budget=budget, tracker=Tracker(tmp_path, False, None),
                      checkpoints=None, make_batches=make_batches, evaluate=dict, snapshot=None, state=LoopState(),
                      flops_per_micro_batch=lambda seq_len: 1.0, peak_flops=1.0, world=2, all_reduce=all_reduce,
                      save_state=dict)
    assert trainer.fit() == "budget"
    assert len(agreed) > 20 and agreed[-2] < 60 <= agreed[-1]  # stopped at the first agreed reading past the deadline
    expected = [lr_factor(seconds / 60, cfg.train.schedule) for seconds in agreed[:-1]]
    assert engine.step_lrs[1:] == pytest.approx(expected, abs=1e-12)  # each step's lr from the last agreement
