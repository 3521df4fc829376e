"""Salience of every output feature: the loss increase of storing it in 4 rather than 8 bits.

For a layer's weight W and a quantization error D = Q(W) - W, a second-order Taylor
expansion of the loss gives, per output feature (row) n,

    S_n(D) = sum_k g[n, k] D[n, k]  +  1/2 sum_k D[n, k] (H D)[n, k]

with g the gradient of the calibration loss.  The salience of feature n is
``S_n(D4) - S_n(D8)`` (4-bit group-wise minus 8-bit per-channel error), averaged over
calibration batches.  The curvature term comes in two flavours:

* ``"hessian"`` (default): the exact Hessian-vector product ``H D`` by double
  back-propagation, one per precision and batch, for all layers at once (so a row's
  term includes its interaction with the other layers' errors).  Linear in the loss.
* ``"fisher"``: the diagonal empirical Fisher, ``H ~ diag(T * mean_b g_b**2)`` from the
  per-batch gradients g_b of batches of T tokens (MixLLM's choice; cheaper, no double
  back-propagation, but quadratic in the loss scale).

Memory: ``hessian`` keeps the backward graph for the double back-propagation (about twice
a training step's activations per batch); ``fisher`` keeps only one squared-gradient tensor
per weight, the choice for models whose training step barely fits.  Lower the batch size
(more, smaller calibration batches give the same average) before switching.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._progress import progress
from ..format import WeightFormat
from .weights import quantize_weight


def quantizable_linears(model: nn.Module, skip=("lm_head", "embed")) -> dict[str, nn.Linear]:
    """Every nn.Linear whose qualified name contains none of ``skip``, in module order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s in name for s in skip)}


def quantization_errors(w: torch.Tensor, group_size: int, format=WeightFormat.PROGRESSIVE):
    """(D4, D8): the float32 error of the all-4-bit and the all-8-bit quantization of w."""
    w32 = w.detach().float()
    d4 = quantize_weight(w32, None, group_size, format).dequantize(torch.float32) - w32
    d8 = quantize_weight(w32, "all", group_size, format).dequantize(torch.float32) - w32
    return d4, d8


def feature_salience(model: nn.Module, batches, loss_fn, layers: dict[str, nn.Linear] | None = None,
                     group_size: int = 128, second_order: str = "hessian",
                     format=WeightFormat.PROGRESSIVE) -> dict[str, torch.Tensor]:
    """{layer name: float64 (N,) salience} over the calibration ``batches``.

    ``loss_fn(model, batch)`` returns the scalar loss whose increase is estimated; the
    model is used as is (call ``model.eval()`` first for deterministic layers).
    """
    if second_order not in ("hessian", "fisher"):
        raise ValueError(f"second_order must be 'hessian' or 'fisher', got {second_order!r}")
    layers = layers if layers is not None else quantizable_linears(model)
    if not layers:
        raise ValueError("no linear layers to score")
    names = list(layers)
    params = [layers[n].weight for n in names]
    errors = [quantization_errors(p, group_size, format) for p in params]
    first = [torch.zeros(p.shape[0], dtype=torch.float64, device=p.device) for p in params]
    curv = [torch.zeros_like(f) for f in first]
    sq_grads = [torch.zeros_like(p, dtype=torch.float32) for p in params] if second_order == "fisher" else None
    batches = list(batches)
    if not batches:
        raise ValueError("feature_salience needs at least one calibration batch")
    for batch in progress(batches, f"salience ({second_order})"):
        with sdpa_kernel([SDPBackend.MATH]):  # fused attention kernels have no double backward
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise ValueError(f"calibration loss is {loss.item()}: cannot estimate salience")
        grads = torch.autograd.grad(loss, params, create_graph=second_order == "hessian")
        for i, (g, (d4, d8)) in enumerate(zip(grads, errors)):
            first[i] += ((g.detach() * d4).sum(1) - (g.detach() * d8).sum(1)).double()
        if second_order == "hessian":
            hd4 = torch.autograd.grad(grads, params, grad_outputs=[d4 for d4, _ in errors], retain_graph=True)
            hd8 = torch.autograd.grad(grads, params, grad_outputs=[d8 for _, d8 in errors])
            for i, ((d4, d8), h4, h8) in enumerate(zip(errors, hd4, hd8)):
                curv[i] += 0.5 * ((d4 * h4).sum(1) - (d8 * h8).sum(1)).double()
        else:
            for i, g in enumerate(grads):
                sq_grads[i] += g.detach().float().square() * _tokens(batch)
    nb = len(batches)
    if second_order == "fisher":  # diag H ~ T * mean_b g_b^2 (the mean of T per-token gradients has 1/T their variance)
        for i, (d4, d8) in enumerate(errors):
            curv[i] = 0.5 * (sq_grads[i] * (d4.square() - d8.square())).sum(1).double()
    return {n: ((f + c) / nb).cpu() for n, f, c in zip(names, first, curv)}


def _tokens(batch) -> int:
    """Tokens whose mean loss one batch's gradient is: (B, L + 1) sequences predict B * L."""
    return batch[:, 1:].numel() if isinstance(batch, torch.Tensor) and batch.dim() == 2 else 1
