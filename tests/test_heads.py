"""The sparse MLM head's own cross-entropy gives torch's loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from pretrain_bench.models.heads import SummedCrossEntropy, sparse_mlm
from pretrain_bench.objectives import Corruption


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_summed_cross_entropy_matches_torch(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 5000, generator=g) * 4).to(dtype)
    targets = torch.randint(0, 5000, (300,), generator=g)
    targets[:10] = 7  # repeated targets, in several rows
    upstream = torch.tensor(0.37, dtype=dtype)  # a loss weight, as electra's or sop's sum applies
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = SummedCrossEntropy.apply(ours, targets)
    reference = F.cross_entropy(theirs, targets, reduction="sum")
    (loss * upstream).backward()
    (reference * upstream).backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert loss.item() == pytest.approx(reference.item(), rel=tol)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=tol, atol=tol * 1e-2)
    assert torch.equal(ours.detach(), logits)  # the logits themselves are left alone (electra samples from them)


def test_summed_cross_entropy_refuses_a_second_backward():
    """The gradient is made in the saved log-probabilities; a second pass must fail, not use them."""
    logits = torch.randn(4, 10, requires_grad=True)
    loss = SummedCrossEntropy.apply(logits, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_sparse_mlm_loss_and_gradient_are_the_mean_cross_entropy_over_selected_positions():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 16, 8, generator=g)
    labels = torch.full((3, 16), -100)
    labels[0, [1, 5]], labels[2, [0, 3, 9]] = torch.tensor([4, 2]), torch.tensor([0, 11, 4])
    kinds = torch.full((3, 16), int(Corruption.MASK))
    weight = torch.randn(12, 8, generator=g, requires_grad=True)
    loss, metrics = sparse_mlm(lambda h: h @ weight.T, hidden, labels, kinds)
    grad, = torch.autograd.grad(loss, weight)
    expected = F.cross_entropy((hidden @ weight.T).flatten(0, 1), labels.flatten())  # mean over non -100
    expected_grad, = torch.autograd.grad(expected, weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad)
    assert metrics["selected_per_seq"].item() == pytest.approx(5 / 3)
