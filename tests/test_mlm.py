"""SPEC §1 statistics of the `mlm` corruption, on >= 1e5 candidate tokens."""

import pytest
import torch

from pretrain_bench.objectives import Corruption, Vocab, get
from pretrain_bench.objectives.masking import MaskingConfig

VOCAB = Vocab(size=1000, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))


def packed_rows(rows: int, length: int = 128, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(5, VOCAB.size, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = VOCAB.cls_id, VOCAB.sep_id
    return ids


def corrupt(ids, seed=1, **masking):
    cls = get("mlm")
    objective = cls(cls.Config(masking=MaskingConfig(**masking)), VOCAB, {})
    return objective.corrupt({"input_ids": ids, "word_start": torch.ones_like(ids, dtype=torch.bool)},
                             torch.Generator().manual_seed(seed))


def test_bernoulli_rate_and_split():
    ids = packed_rows(4000)
    out = corrupt(ids, selection="bernoulli")
    candidates = 4000 * 126
    selected = out["labels"] >= 0
    assert abs(selected.sum().item() / candidates - 0.150) < 0.004
    kinds = out["corruption_type"][selected]
    for kind, share in ((Corruption.MASK, 0.8), (Corruption.RANDOM, 0.1), (Corruption.KEEP, 0.1)):
        assert abs((kinds == kind).float().mean().item() - share) < 0.01


def test_exact_k_count_and_realised_rate():
    ids = packed_rows(6000)
    out = corrupt(ids)
    per_row = (out["labels"] >= 0).sum(1)
    assert (per_row == 19).all()  # round(128 * 0.15) = 19, [CLS]/[SEP] counted in the length
    assert abs(per_row.sum().item() / (6000 * 126) - 19 / 126) < 1e-9
    kinds = out["corruption_type"][out["labels"] >= 0]
    assert abs((kinds == Corruption.MASK).float().mean().item() - 0.8) < 0.01
    assert abs((kinds == Corruption.RANDOM).float().mean().item() - 0.1) < 0.01


def test_exact_k_with_padding_and_short_rows():
    ids = packed_rows(2000)
    lengths = torch.randint(3, 129, (2000,), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(128)[None, :]
    ids = torch.where(positions < lengths[:, None], ids, torch.full_like(ids, VOCAB.pad_id))
    ids[torch.arange(2000), lengths - 1] = VOCAB.sep_id
    out = corrupt(ids)
    k = torch.clamp(torch.round(lengths * 0.15), min=1, max=20).long()
    candidates = lengths - 2
    per_row = (out["labels"] >= 0).sum(1)
    enough = candidates >= k
    assert (per_row[enough] == k[enough]).all()
    assert (per_row[~enough] == candidates[~enough]).all()


@pytest.mark.parametrize("selection", ["exact_k", "bernoulli"])
def test_specials_never_selected_and_labels_match_types(selection):
    ids = packed_rows(500)
    ids[:, 60:64] = VOCAB.pad_id
    ids[:, 30] = VOCAB.unk_id
    out = corrupt(ids, selection=selection)
    selected = out["labels"] >= 0
    assert not selected[torch.isin(ids, torch.tensor(VOCAB.special_ids))].any()
    assert torch.equal(selected, out["corruption_type"] != Corruption.NONE)
    assert torch.equal(out["labels"][selected], ids[selected])
    unchanged = out["corruption_type"] == Corruption.NONE
    assert torch.equal(out["input_ids"][unchanged], ids[unchanged])
    assert (out["input_ids"][out["corruption_type"] == Corruption.MASK] == VOCAB.mask_id).all()


def test_padding_is_never_a_candidate_even_when_not_listed_as_special():
    """A plug-in's hand-built Vocab may leave the pad id out of special_ids: padding still never counts."""
    from pretrain_bench.objectives.masking import candidates

    vocab = Vocab(size=1000, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(1, 2, 3, 4))
    ids = packed_rows(4)
    ids[:, 60:] = vocab.pad_id
    cand = candidates(ids, vocab)
    assert not cand[:, 60:].any() and cand[:, 1:60].all()


def test_same_seed_same_corruption_other_seed_differs():
    ids = packed_rows(64)
    a, b, c = corrupt(ids, seed=5), corrupt(ids, seed=5), corrupt(ids, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


def test_random_replacements_exclude_specials_when_asked():
    ids = packed_rows(3000)
    out = corrupt(ids, exclude_special_from_random=True, mask_prob=0.0, random_prob=1.0)
    randoms = out["input_ids"][out["corruption_type"] == Corruption.RANDOM]
    assert len(randoms) > 50_000 and not torch.isin(randoms, torch.tensor(VOCAB.special_ids)).any()
    out = corrupt(ids, mask_prob=0.0, random_prob=1.0)
    randoms = out["input_ids"][out["corruption_type"] == Corruption.RANDOM]
    assert torch.isin(randoms, torch.tensor(VOCAB.special_ids)).any()  # uniform over the full vocabulary


def test_masking_config_rejects_impossible_split():
    with pytest.raises(ValueError, match="mask_prob \\+ random_prob"):
        MaskingConfig(mask_prob=0.9, random_prob=0.2)
