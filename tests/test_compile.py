"""`model.compile`: torch.compile changes the speed, not the numbers, and the MFU counter still sees every FLOP."""

import pytest
import torch

from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.objectives import get
from pretrain_bench.train.throughput import training_flops
from tests.test_mlm import VOCAB, packed_rows

SHAPE = {"size": "tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0, "max_position_embeddings": 64}


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_compiled_step_matches_eager(arch):
    cls = get("mlm")
    objective = cls(cls.Config(), VOCAB, {})
    batch = objective.corrupt({"input_ids": packed_rows(8, 32)}, torch.Generator().manual_seed(0))
    modules = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        modules[compiled] = objective.build(ModelConfig(arch=arch, compile=compiled, **SHAPE))
    flops = {c: training_flops(m, batch) for c, m in modules.items()}
    assert flops[True] == flops[False] > 0
    losses, grads = {}, {}
    for compiled, module in modules.items():
        for _ in range(2):  # the second call runs the cached graph, not the first trace
            module.zero_grad()
            loss = module(**batch)["loss"]
            loss.backward()
        losses[compiled] = loss.item()
        grads[compiled] = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert torch.allclose(grads[True], grads[False], rtol=1e-3, atol=1e-6)
