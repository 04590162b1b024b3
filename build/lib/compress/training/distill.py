"""Distillation losses: soft-target KL on logits and MSE on matched intermediate features.

The logit loss follows Hinton et al. (2015): the KL term is scaled by ``T**2`` so its gradient magnitude does
not shrink as the temperature grows, which keeps ``alpha`` meaningful across temperatures.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CompressError

__all__ = ["distillation_loss", "feature_loss", "FeatureDistiller"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Args:
        student_logits: ``(B, K)``.
        teacher_logits: ``(B, K)``; no gradient flows into it.
        labels: ``(B,)`` int64 class indices.
        alpha: weight of the KL term in ``[0, 1]``.
        temperature: softmax temperature ``T > 0``.
        label_smoothing: label smoothing of the cross-entropy term.

    Returns:
        A scalar: the batch-mean loss (KL uses ``batchmean`` reduction, i.e. the true KL per sample).
    """
    s = student_logits.float()
    ce = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = teacher_logits.detach().float()
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


def feature_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
                 adapter: nn.Module | None = None) -> torch.Tensor:
    """MSE between a (possibly adapted) student feature and the teacher's feature of the same shape.

    Args:
        student_feature: ``(B, Cs, H, W)`` or ``(B, Cs)``.
        teacher_feature: ``(B, Ct, H, W)`` or ``(B, Ct)``; detached.
        adapter: maps ``Cs`` to ``Ct`` channels (a 1x1 conv or linear layer), or ``None`` when equal.
    """
    s = student_feature if adapter is None else adapter(student_feature)
    return F.mse_loss(s.float(), teacher_feature.detach().float())


def _adapter(cs: int, ct: int, ndim: int) -> nn.Module:
    # A learned linear map in channel space; identity-like start is not possible when widths differ, so use
    # the default init and let it train along with the student.
    return nn.Conv2d(cs, ct, kernel_size=1, bias=False) if ndim == 4 else nn.Linear(cs, ct, bias=False)


class FeatureDistiller:
    """Captures the outputs of named layers in student and teacher and computes the summed feature loss.

    Adapters (1x1 conv / linear) are created by :meth:`setup` for layers whose widths differ; they are trained
    together with the student (pass :attr:`adapters` parameters to the optimizer) and discarded after training.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.adapters = nn.ModuleDict()
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._handles = [*self._hook(student, self._student, "student"),
                         *self._hook(teacher, self._teacher, "teacher")]

    def _hook(self, model: nn.Module, store: dict[str, torch.Tensor], which: str) -> list:
        modules = dict(model.named_modules())
        handles = []
        for name in self.names:
            if name not in modules:
                raise CompressError(f"distill.features: layer {name!r} not found in the {which} model "
                                    f"(expected a name from named_modules(), e.g. {list(modules)[1:4]})")

            def save(_m: nn.Module, _i: tuple, out: torch.Tensor, name: str = name) -> None:
                store[name] = out

            handles.append(modules[name].register_forward_hook(save))
        return handles

    def setup(self, device: torch.device) -> None:
        """Create adapters from the shapes captured by one forward pass of both models (call after it)."""
        for name in self.names:
            s, t = self._student[name], self._teacher[name]
            if s.dim() != t.dim() or s.shape[2:] != t.shape[2:]:
                raise CompressError(f"distill.features: layer {name!r} has student shape {tuple(s.shape)} and "
                                    f"teacher shape {tuple(t.shape)}; expected equal spatial sizes")
            if s.shape[1] != t.shape[1]:
                self.adapters[name.replace(".", "__")] = _adapter(s.shape[1], t.shape[1], s.dim())
        self.adapters.to(device)

    def loss(self) -> torch.Tensor:
        """Sum of the feature losses of the last forward pass of both models."""
        total = 0.0
        for name in self.names:
            adapter = self.adapters[name.replace(".", "__")] if name.replace(".", "__") in self.adapters else None
            total = total + feature_loss(self._student[name], self._teacher[name], adapter)
        self._student.clear()
        self._teacher.clear()
        return total

    def clear(self) -> None:
        """Forget the captured features (e.g. after the shape-probing pass of :meth:`setup`)."""
        self._student.clear()
        self._teacher.clear()

    def close(self) -> None:
        """Remove the hooks (adapters are simply dropped with this object)."""
        for h in self._handles:
            h.remove()
        self._handles = []
