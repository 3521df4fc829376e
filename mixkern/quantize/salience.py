"""Salience of every output feature: the loss increase of storing it in 4 rather than 8 bits.

Three estimators, all from the calibration loss's gradient ``g`` and the quantization
errors ``D4 = Q4(W) - W`` (group-wise 4-bit) and ``D8`` (per-channel 8-bit):

* ``"mixllm"`` (MixLLM's own, its ``searcher.py``): per calibration *sequence* s, with
  g_s the gradient of that sequence's mean loss, ``a = sum_k g_s[n, k] D4[n, k]`` and
  ``score[n] += |a + a**2 / 2|``, summed over sequences.  Only D4 enters.
* ``"fisher"``: the second-order Taylor difference ``S_n(D4) - S_n(D8)``,
  ``S_n(D) = sum_k g D + 1/2 sum_k D (H D)`` with H the diagonal empirical Fisher
  ``T * mean_b g_b**2`` over batches of T tokens; averaged over batches.
* ``"hessian"``: the same difference with the exact Hessian-vector product ``H D`` by double
  back-propagation, one per precision and batch, for all layers at once (so a row's term
  includes its interaction with the other layers' errors).  Linear in the loss.

Memory: ``mixllm`` and ``fisher`` are *streamed*: one forward and one backward per batch,
no weight gradients; each layer's statistics are reduced to one number per row inside the
backward pass, from the layer's input x and output gradient dy (``g = dy^T x`` is never
kept), so the cost is a training step's activations plus one float16 copy of D4 per weight.
Both can be gathered in the same pass.  ``hessian`` keeps the double-backward graph of the
whole model (about twice a training step's activations plus several float32 copies of every
weight): it is for small models and refuses more than ``HESSIAN_MAX_WEIGHTS``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._progress import progress
from ..format import PackedWeight, WeightFormat
from .weights import quantize_weight

ESTIMATORS = ("mixllm", "fisher", "hessian")
STREAMED = ("mixllm", "fisher")
HESSIAN_MAX_WEIGHTS = 200_000_000  # ~ 10 float32 copies of every weight + 2 graphs: beyond this, stream


def quantizable_linears(model: nn.Module, skip=("lm_head", "embed")) -> dict[str, nn.Linear]:
    """Every nn.Linear whose qualified name contains none of ``skip``, in module order.

    For a Hugging Face model (one with ``_no_split_modules``, its decoder-layer classes), only
    the linears inside those decoder layers: q/k/v/o and the MLP, never the head.
    """
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    inside = None
    if layer_classes:
        inside = {f"{name}." for name, m in model.named_modules() if type(m).__name__ in layer_classes}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s in name for s in skip)
            and (inside is None or any(name.startswith(p) for p in inside))}


def quantization_errors(w: torch.Tensor, group_size: int, format=WeightFormat.PROGRESSIVE):
    """(D4, D8): the float32 error of the all-4-bit and the all-8-bit quantization of w."""
    return packed_errors(w, *all_precisions(w, group_size, format))


def all_precisions(w: torch.Tensor, group_size: int, format=WeightFormat.PROGRESSIVE) -> tuple[PackedWeight, PackedWeight]:
    """w packed with every feature 4-bit and with every feature 8-bit: quantization is row by
    row, so any mixed packing is a row selection of these two (``mixkern.model.select_rows``)."""
    w = w.detach() if w.dtype != torch.float64 else w.detach().float()
    return quantize_weight(w, None, group_size, format), quantize_weight(w, "all", group_size, format)


def packed_errors(w: torch.Tensor, all4: PackedWeight, all8: PackedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    w32 = w.detach().float()
    return all4.dequantize(torch.float32) - w32, all8.dequantize(torch.float32) - w32


def feature_salience(model: nn.Module, batches, loss_fn, layers: dict[str, nn.Linear] | None = None,
                     group_size: int = 128, second_order: str = "hessian",
                     format=WeightFormat.PROGRESSIVE, packs: dict | None = None) -> dict[str, torch.Tensor]:
    """{layer name: float64 (N,) salience} over the calibration ``batches``.

    ``second_order`` names the estimator (``mixllm``, ``fisher`` or ``hessian``; see the module
    docstring).  ``loss_fn(model, batch)`` returns the scalar loss whose increase is estimated;
    the model is used as is (call ``model.eval()`` first for deterministic layers).  ``packs``
    ({name: (all-4-bit, all-8-bit) PackedWeight}) reuses quantizations already made.
    """
    if second_order not in ESTIMATORS:
        raise ValueError(f"second_order (the salience estimator) must be one of {ESTIMATORS}, got {second_order!r}")
    layers = layers if layers is not None else quantizable_linears(model)
    if not layers:
        raise ValueError("no linear layers to score")
    batches = list(batches)
    if not batches:
        raise ValueError("feature_salience needs at least one calibration batch")
    if second_order in STREAMED:
        return streamed_salience(model, batches, loss_fn, layers, (second_order,), group_size, format, packs)[second_order]
    return _hessian_salience(model, batches, loss_fn, layers, group_size, format, packs)


def _errors(layers, group_size, format, packs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    packs = packs or {}
    return {n: packed_errors(m.weight, *packs[n]) if n in packs else quantization_errors(m.weight, group_size, format)
            for n, m in progress(list(layers.items()), "quantization errors")}


def _hessian_salience(model, batches, loss_fn, layers, group_size, format, packs):
    names = list(layers)
    params = [layers[n].weight for n in names]
    size = sum(p.numel() for p in params)
    if size > HESSIAN_MAX_WEIGHTS:
        raise ValueError(f"hessian salience holds the double-backward graph of all {len(names)} layers at once "
                         f"({size / 1e9:.2f} G weights, more than {HESSIAN_MAX_WEIGHTS / 1e9:.1f} G): use "
                         f"second_order='mixllm' or 'fisher', which stream layer by layer")
    errors = list(_errors(layers, group_size, format, packs).values())
    first = [torch.zeros(p.shape[0], dtype=torch.float64, device=p.device) for p in params]
    curv = [torch.zeros_like(f) for f in first]
    for batch in progress(batches, "salience (hessian)"):
        with sdpa_kernel([SDPBackend.MATH]):  # fused attention kernels have no double backward
            loss = _finite(loss_fn(model, batch))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for i, (g, (d4, d8)) in enumerate(zip(grads, errors)):
            first[i] += ((g.detach() * d4).sum(1) - (g.detach() * d8).sum(1)).double()
        hd4 = torch.autograd.grad(grads, params, grad_outputs=[d4 for d4, _ in errors], retain_graph=True)
        hd8 = torch.autograd.grad(grads, params, grad_outputs=[d8 for _, d8 in errors])
        for i, ((d4, d8), h4, h8) in enumerate(zip(errors, hd4, hd8)):
            curv[i] += 0.5 * ((d4 * h4).sum(1) - (d8 * h8).sum(1)).double()
    return {n: ((f + c) / len(batches)).cpu() for n, f, c in zip(names, first, curv)}


def _finite(loss: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(loss):
        raise ValueError(f"calibration loss is {loss.item()}: cannot estimate salience")
    return loss


class _Tap:
    """One layer's running statistics, fed (x, dy) by hooks during the backward pass."""

    def __init__(self, layer: nn.Linear, d4: torch.Tensor, all8: PackedWeight | None, estimators,
                 error_dtype: torch.dtype = torch.float16):
        self.layer, self.all8, self.estimators = layer, all8, estimators
        # D4 kept in error_dtype, scaled by a power of two (exact) so its largest element sits near
        # 2**14: float16 then keeps 11 significant bits of every error that matters, at half the memory.
        top = float(d4.abs().max())
        self.d4_scale = 2.0 ** (14 - math.ceil(math.log2(top))) if top > 0 and error_dtype == torch.float16 else 1.0
        self.d4_stored = (d4 * self.d4_scale).to(error_dtype)
        self.sums = {e: torch.zeros(layer.out_features, dtype=torch.float64, device=d4.device) for e in estimators}
        self.tokens = self.calls = 0
        self.output = None

    def d4(self) -> torch.Tensor:
        """The all-4-bit error in float32 (a fresh tensor: callers may work in place)."""
        return self.d4_stored.float() / self.d4_scale

    def d8(self) -> torch.Tensor:
        """The all-8-bit error, rebuilt per batch rather than held (as :func:`packed_errors`
        computes it: the pack's own dequantization, any format)."""
        return self.all8.dequantize(torch.float32) - self.layer.weight.detach().float()

    def forward_hook(self, module, inputs, output):
        self.calls += 1
        if self.calls > 1:
            raise ValueError("streamed salience needs each linear called once per forward (a shared layer is not supported)")
        if output.requires_grad:
            x = inputs[0].detach()
            output.register_hook(lambda dy: self.add(x, dy))
            self.output = output

    def add(self, x: torch.Tensor, dy: torch.Tensor) -> None:
        """One batch: x (..., K) the layer input, dy (..., N) the loss gradient of its output."""
        seqs = x.shape[0] if x.dim() == 3 else 1  # a 2-D batch counts as one sequence
        x2 = x.reshape(seqs, -1, x.shape[-1]).float()
        dy2 = dy.reshape(seqs, -1, dy.shape[-1]).float()
        d4 = self.d4()
        if "mixllm" in self.sums:  # per sequence: sum_k g_s D4 = sum_t dy (x . D4); g_s = seqs * batch part
            a = seqs * (dy2 * (x2 @ d4.T)).sum(1).double()
            self.sums["mixllm"] += (a + 0.5 * a.square()).abs().sum(0)
        if "fisher" in self.sums:
            g = dy2.reshape(-1, dy2.shape[-1]).T @ x2.reshape(-1, x2.shape[-1])  # (N, K) batch gradient, transient
            d8 = self.d8()
            diff = d4 - d8
            first = torch.einsum("nk,nk->n", g, diff)
            curv = 0.5 * self.tokens * torch.einsum("nk,nk->n", g.square_(), diff.mul_(d4.add_(d8)))  # d4^2 - d8^2
            self.sums["fisher"] += (first + curv).double()


def streamed_salience(model: nn.Module, batches, loss_fn, layers: dict[str, nn.Linear],
                      estimators=STREAMED, group_size: int = 128, format=WeightFormat.PROGRESSIVE,
                      packs: dict | None = None, error_dtype: torch.dtype = torch.float16) -> dict[str, dict[str, torch.Tensor]]:
    """{estimator: {layer: float64 (N,) salience}} for ``mixllm`` and/or ``fisher``, in one pass.

    One forward and one backward per batch; gradients are taken with respect to the layers'
    outputs only (no weight gradient is formed), and every layer reduces (x, dy) to per-row
    sums inside the backward pass.  ``mixllm`` sums over sequences (the first dimension of
    3-D activations; gradients per sequence assume the loss is the mean over equal-length
    sequences, as the default losses are); ``fisher`` averages over batches.  D4 is held in
    ``error_dtype`` between batches (float16: half the memory, 2**-11 relative rounding of each
    error, far below the estimators' own noise; float32 for exact comparisons).
    """
    bad = [e for e in estimators if e not in STREAMED]
    if bad or not estimators:
        raise ValueError(f"streamed estimators are {STREAMED}, got {tuple(estimators)}")
    batches = list(batches)
    packs = packs or {}
    taps = {}
    for name, layer in progress(list(layers.items()), "quantization errors"):
        all4, all8 = packs.get(name) or all_precisions(layer.weight, group_size, format)
        d4 = all4.dequantize(torch.float32) - layer.weight.detach().float()
        taps[name] = _Tap(layer, d4, all8 if "fisher" in estimators else None, estimators, error_dtype)
    grad_flags = {n: layer.weight.requires_grad for n, layer in layers.items()}
    handles = [layer.register_forward_hook(taps[n].forward_hook) for n, layer in layers.items()]
    try:
        for layer in layers.values():
            layer.weight.requires_grad_(True)  # so the graph reaches every layer even in a frozen model
        for batch in progress(batches, f"salience ({', '.join(estimators)})"):
            _streamed_batch(model, batch, loss_fn, taps)
    finally:
        for h in handles:
            h.remove()
        for n, layer in layers.items():
            layer.weight.requires_grad_(grad_flags[n])
    scale = {"mixllm": 1.0, "fisher": 1.0 / len(batches)}
    return {e: {n: (t.sums[e] * scale[e]).cpu() for n, t in taps.items()} for e in estimators}


def _streamed_batch(model, batch, loss_fn, taps: dict[str, _Tap]) -> None:
    for tap in taps.values():
        tap.calls, tap.tokens, tap.output = 0, tokens_of(batch), None
    loss = _finite(loss_fn(model, batch))
    outputs = [tap.output for tap in taps.values() if tap.output is not None]
    if not outputs:
        raise ValueError("the calibration loss does not depend on any quantizable layer")
    torch.autograd.grad(loss, outputs, allow_unused=True)  # the hooks consume each dy as it is formed
    for tap in taps.values():
        tap.output = None


def tokens_of(batch) -> int:
    """Tokens whose mean loss one batch's gradient is: (B, L + 1) sequences predict B * L;
    a dict batch counts its labels (or input_ids) the same way, skipping -100; else 1."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        ids = batch.get("labels", batch.get("input_ids"))
        return int((ids[:, 1:] != -100).sum()) if isinstance(ids, torch.Tensor) and ids.dim() == 2 else 1
    return batch[:, 1:].numel() if isinstance(batch, torch.Tensor) and batch.dim() == 2 else 1
