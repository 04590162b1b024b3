"""evaluate(): accuracies against hand-built logits, agreement, mode restoration, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import CompressError
from compress.measurement import evaluate


class FixedLogits(nn.Module):
    """Returns precomputed logits indexed by the first pixel of each image (the sample index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def _loader(labels: torch.Tensor, batch_size: int = 3) -> DataLoader:
    n = labels.numel()
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def test_top1_top5_per_class_loss_against_reference_computation():
    torch.manual_seed(0)
    n, classes = 23, 7
    logits = torch.randn(n, classes)
    labels = torch.randint(0, classes, (n,))
    ev = evaluate(FixedLogits(logits), _loader(labels), verbose=False)
    top1 = int((logits.argmax(1) == labels).sum()) / n
    top5 = int((logits.topk(5, 1).indices == labels[:, None]).any(1).sum()) / n
    assert ev.count == n
    assert ev.top1 == pytest.approx(top1, abs=1e-9)
    assert ev.top5 == pytest.approx(top5, abs=1e-9)
    assert ev.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    for c in range(classes):
        mask = labels == c
        expected = (logits.argmax(1)[mask] == c).float().mean().item() if mask.any() else None
        assert ev.per_class[c] == (pytest.approx(expected) if expected is not None else None)
    assert ev.agreement is None and "agreement" not in ev.summary()
    assert set(ev.summary()) == {"top1", "top5", "loss", "n"}


def test_top5_is_capped_at_num_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    ev = evaluate(FixedLogits(logits), _loader(torch.tensor([0, 2])), verbose=False)
    assert ev.top1 == 0.0
    assert ev.top5 == 1.0  # k = 3 covers every class


def test_agreement_with_reference_and_modes_restored():
    torch.manual_seed(1)
    n, classes = 20, 4
    a, b = torch.randn(n, classes), torch.randn(n, classes)
    b[:10] = a[:10] * 2  # same argmax for the first 10 samples
    model, ref = FixedLogits(a).train(), FixedLogits(b).train()
    ref.bn.eval()
    ev = evaluate(model, _loader(torch.zeros(n, dtype=torch.long)), reference=ref, verbose=False)
    expected = (a.argmax(1) == b.argmax(1)).float().mean().item()
    assert expected >= 0.5
    assert ev.agreement == pytest.approx(expected)
    assert ev.summary()["agreement"] == pytest.approx(expected, abs=1e-6)
    assert model.training and model.bn.training and ref.training and not ref.bn.training
    self_ev = evaluate(model, _loader(torch.zeros(n, dtype=torch.long)), reference=model, verbose=False)
    assert self_ev.agreement == 1.0


def test_empty_loader_and_bad_batches_raise_compress_error():
    model = FixedLogits(torch.randn(2, 3))
    with pytest.raises(CompressError, match="no samples"):
        evaluate(model, [], verbose=False)
    with pytest.raises(CompressError, match=r"\(images, labels\)"):
        evaluate(model, [torch.zeros(2, 1, 2, 2)], verbose=False)
