"""A user's own objective, registered nowhere: named in a config as 'tests.plugins.shuffle_objective:Shuffled'.
It masks like `mlm` but predicts the tokens of rows whose word order was shuffled."""

import torch

from pretrain_bench.objectives.mlm import MLM


class Shuffled(MLM):
    summary = "test plug-in: MLM over rows with shuffled token order"

    def corrupt(self, batch, generator):
        order = torch.randperm(batch["input_ids"].shape[1] - 2, generator=generator) + 1
        ids = batch["input_ids"].clone()
        ids[:, 1:-1] = ids[:, order]
        return super().corrupt({**batch, "input_ids": ids}, generator)


class NotAnObjective:
    pass
