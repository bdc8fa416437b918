"""Book-keeping clipping: DP-SGD's per-sample clipping in one backward pass.

Bu et al. 2023, "Differentially Private Optimization on Large Model at Small Cost"
(ICML). The forward pass keeps each supported layer's input ``a``; the one backward pass
keeps the gradient ``g`` at its output, and computes no parameter gradient at all (the
parameters are frozen while it runs). From ``(a, g)`` come each sample's gradient norm
(a Linear layer on 2-D input: ``‖a_i‖²·‖g_i‖²``; over a sequence or a conv's unfolded
patches: Gram matrices or the per-sample gradient itself, whichever is cheaper), the
clipping factors ``c_i = min(1, C / (‖∇_i‖ + 1e-6))`` as Opacus computes them, and then
each layer's clipped, summed gradient ``Σ_i c_i ∇_i`` as one matmul. That sum goes into
``p.grad``, where Opacus' ``DPOptimizerFastGradientClipping`` adds the noise, scales and
steps, and its accountant counts the step: Opacus' noise, sampler and ε, unchanged.
Ghost clipping gets the same numbers with two backward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from fedpriv.errors import ConfigError

#: A layer's per-sample squared gradient norms (B,) and a function of the clipping
#: factors (B,) that returns each trainable parameter's clipped, summed gradient.
LayerGrads = tuple[Tensor, Callable[[Tensor], list[tuple[Tensor, Tensor]]]]


def unsupported(model: nn.Module) -> list[str]:
    """Why book-keeping clipping cannot train ``model`` (empty: it can)."""
    out = []
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        label = f"{name or 'model'} ({type(module).__name__})"
        if type(module) not in LAYERS:
            out.append(f"{label} is not one of {', '.join(t.__name__ for t in LAYERS)}")
        elif isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            out.append(f"{label} has groups != 1, non-zero padding_mode or string padding")
        for p in own:
            if id(p) in owners:
                out.append(f"{label} shares a parameter with {owners[id(p)]}")
            owners[id(p)] = label
    return out


def _affine(a: Tensor, g: Tensor, weight: Tensor | None, bias: Tensor | None) -> LayerGrads:
    """Linear map ``g_t = W a_t (+ b)`` at T positions per sample: ``a`` (B, T, d_in),
    ``g`` (B, T, d_out). ``weight``/``bias`` are None where not trainable."""
    n, t, d_in = a.shape
    d_out = g.shape[2]
    g_sum = g.reshape(n, d_out) if t == 1 else g.sum(1)  # each sample's bias gradient
    sq_bias = (g_sum * g_sum).sum(1)
    sq = sq_bias if bias is not None else torch.zeros_like(sq_bias)
    if weight is not None:
        if t == 1:  # ‖g aᵀ‖² = ‖a‖²‖g‖²
            a = a.reshape(n, d_in)
            sq = sq + (a * a).sum(1) * sq_bias
        elif t * (d_in + d_out) < d_in * d_out:  # Gram matrices are the smaller product
            grams = torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))
            sq = sq + grams.sum((1, 2))
        else:
            return _direct(torch.bmm(g.transpose(1, 2), a), g_sum, weight, bias)

    def clipped(c: Tensor) -> list[tuple[Tensor, Tensor]]:
        out = []
        if weight is not None:
            if t == 1:
                grad = (g_sum * c[:, None]).T @ a
            else:
                grad = (g * c[:, None, None]).reshape(-1, d_out).T @ a.reshape(-1, d_in)
            out.append((weight, grad.reshape(weight.shape)))
        if bias is not None:
            out.append((bias, c @ g_sum))
        return out

    return sq, clipped


def _trainable(p: object, trainable: set[int]) -> Tensor | None:
    """``p`` if it is a parameter being trained, else None (absent or frozen)."""
    return p if isinstance(p, Tensor) and id(p) in trainable else None


def _linear(m: nn.Module, a: Tensor, g: Tensor, trainable: set[int]) -> LayerGrads:
    n = a.shape[0]
    return _affine(
        a.reshape(n, -1, a.shape[-1]),
        g.reshape(n, -1, g.shape[-1]),
        _trainable(m.weight, trainable),
        _trainable(m.bias, trainable),
    )


def _direct(per_sample: Tensor, g_sum: Tensor, weight: Tensor, bias: Tensor | None) -> LayerGrads:
    """From each sample's weight gradient ``per_sample`` (B, d_out, d_in) and bias
    gradient ``g_sum`` (B, d_out): norms, then the clipped sum as one contraction."""
    sq = per_sample.square().sum((1, 2))
    if bias is not None:
        sq = sq + (g_sum * g_sum).sum(1)

    def clipped(c: Tensor) -> list[tuple[Tensor, Tensor]]:
        out = [(weight, torch.einsum("b,boi->oi", c, per_sample).reshape(weight.shape))]
        return [*out, (bias, c @ g_sum)] if bias is not None else out

    return sq, clipped


def _conv2d(m: nn.Module, a: Tensor, g: Tensor, trainable: set[int]) -> LayerGrads:
    """A conv is a Linear map on the unfolded (im2col) patches, one position per pixel.
    Where per-sample gradients are the cheaper product (few channels, many pixels: every
    fedpriv CNN), they come from one grouped convolution's weight gradient (a group per
    sample), several times faster on CPU than unfolding."""
    assert isinstance(m, nn.Conv2d)
    weight, bias = _trainable(m.weight, trainable), _trainable(m.bias, trainable)
    n, c_in = a.shape[:2]
    c_out, positions = g.shape[1], g.shape[2] * g.shape[3]
    d_in = c_in * m.kernel_size[0] * m.kernel_size[1]
    if weight is not None and positions * (d_in + c_out) >= d_in * c_out:
        per_sample = conv2d_weight(
            a.reshape(1, n * c_in, *a.shape[2:]),
            (n * c_out, c_in, *m.kernel_size),
            g.reshape(1, n * c_out, *g.shape[2:]),
            m.stride,
            m.padding,
            m.dilation,
            groups=n,
        )
        return _direct(per_sample.reshape(n, c_out, d_in), g.sum((2, 3)), weight, bias)
    patches = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # type: ignore[arg-type]
    return _affine(patches.transpose(1, 2), g.reshape(n, c_out, -1).transpose(1, 2), weight, bias)


def _norm(normalized: Tensor, g: Tensor, m: nn.Module, trainable: set[int]) -> LayerGrads:
    """Elementwise affine after a normalization: per-sample gradients directly (B, C)."""
    n, c = g.shape[0], g.shape[-1]
    grads: list[tuple[Tensor, Tensor]] = []
    if (w := _trainable(m.weight, trainable)) is not None:
        grads.append((w, (normalized * g).reshape(n, -1, c).sum(1)))
    if (b := _trainable(m.bias, trainable)) is not None:
        grads.append((b, g.reshape(n, -1, c).sum(1)))
    sq = sum((s.square().sum(1) for _, s in grads), torch.zeros(n, dtype=g.dtype, device=g.device))

    def clipped(factors: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [(p, (factors @ s).reshape(p.shape)) for p, s in grads]

    return sq, clipped


def _group_norm(m: nn.Module, a: Tensor, g: Tensor, trainable: set[int]) -> LayerGrads:
    assert isinstance(m, nn.GroupNorm)
    normalized = F.group_norm(a, m.num_groups, eps=m.eps)
    # channels first: move C last so (B, rest, C) sums over the rest
    return _norm(normalized.movedim(1, -1), g.movedim(1, -1), m, trainable)


def _layer_norm(m: nn.Module, a: Tensor, g: Tensor, trainable: set[int]) -> LayerGrads:
    assert isinstance(m, nn.LayerNorm)
    normalized = F.layer_norm(a, m.normalized_shape, eps=m.eps)
    dims = len(m.normalized_shape)  # flattened into one last axis, as the weight's numel
    return _norm(normalized.flatten(-dims), g.flatten(-dims), m, trainable)


LAYERS: dict[type[nn.Module], Callable[[nn.Module, Tensor, Tensor, set[int]], LayerGrads]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.GroupNorm: _group_norm,
    nn.LayerNorm: _layer_norm,
}


class BookkeepingClipping:
    """Per-sample clipping of ``model``'s gradients from one backward pass.

    Use :meth:`recording` around the forward pass and the backward of the *summed*
    per-sample loss; on leaving it every trainable parameter's ``p.grad`` holds
    ``Σ_i c_i ∇_i`` (clipped to ``max_grad_norm`` per sample, summed, no noise).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        problems = unsupported(model)
        if problems:
            raise ConfigError(
                "privacy.grad_sample_mode=bookkeeping cannot train this model: "
                + "; ".join(problems)
                + ". Use grad_sample_mode=auto, ghost or hooks"
            )
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._trainable = {id(p) for p in self.params}
        self._layers = [
            m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self._inputs: dict[nn.Module, Tensor] = {}
        self._grads: dict[nn.Module, Tensor] = {}

    def _keep(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        """Forward hook: keep the layer's input, and catch its output's gradient."""
        if module in self._inputs:
            raise RuntimeError(
                f"{type(module).__name__} ran twice in one forward pass; book-keeping "
                "clipping needs each layer once per sample (use grad_sample_mode=hooks)"
            )
        self._inputs[module] = inputs[0].detach()
        if not output.requires_grad:  # the first trainable layer: nothing upstream to train
            output = output.detach().requires_grad_().clone()

        def catch(grad: Tensor) -> None:
            self._grads[module] = grad

        output.register_hook(catch)
        return output

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Freeze the parameters (so backward computes no unclipped ``p.grad``) while the
        forward and backward run inside; then write the clipped sums into ``p.grad``."""
        self._inputs.clear()
        self._grads.clear()
        hooks = [m.register_forward_hook(self._keep) for m in self._layers]
        for p in self.params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for p in self.params:
                p.requires_grad_(True)
        try:
            self._write_clipped()
        finally:
            self._inputs.clear()
            self._grads.clear()

    def _write_clipped(self) -> None:
        missing = [type(m).__name__ for m in self._layers if m not in self._grads]
        if missing and len(missing) < len(self._layers):
            raise RuntimeError(
                f"no output gradient reached {', '.join(missing)}: run the forward and the "
                "backward of the summed per-sample loss inside recording()"
            )
        empty = any(len(a) == 0 for a in self._inputs.values())
        if missing or empty:  # an empty batch (Poisson sampling draws some), or no backward
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return
        grads = [
            LAYERS[type(m)](m, self._inputs[m], self._grads[m], self._trainable)
            for m in self._layers
        ]
        norms = torch.stack([sq for sq, _ in grads]).sum(0).sqrt()
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for _, clipped in grads:
            for param, grad in clipped(factors):
                param.grad = grad.to(param.dtype)
