"""Triton kernels: GroupNorm fused with SiLU, and GEGLU (the projection's two halves, hidden * GELU(gate)).

On a GPU each replaces three or four memory passes of eager PyTorch (norm statistics, normalise, affine, activation;
or split, GELU, multiply) with one read and one write per element after the statistics. Statistics and arithmetic
are float32 whatever the tensor dtype. With TRITON_INTERPRET=1 (set before this module is imported) the same kernels
run on CPU tensors, which is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _group_norm_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    group_numel,
    channels_per_group,
    spatial,
    num_groups,
    eps,
    APPLY_SILU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # one program per (sample, group): in a contiguous (N, C, *spatial) tensor those elements are contiguous
    row = tl.program_id(0)
    group = row % num_groups
    base = row.to(tl.int64) * group_numel
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_numel, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + offsets, mask=offsets < group_numel, other=0.0).to(tl.float32)
        total += x
    mean = tl.sum(total, axis=0) / group_numel
    squares = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_numel, BLOCK):  # a second pass: the variance without cancellation
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < group_numel
        x = tl.load(x_ptr + base + offsets, mask=inside, other=0.0).to(tl.float32)
        centred = tl.where(inside, x - mean, 0.0)
        squares += centred * centred
    rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / group_numel + eps)
    for start in range(0, group_numel, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < group_numel
        channel = group * channels_per_group + offsets // spatial
        x = tl.load(x_ptr + base + offsets, mask=inside, other=0.0).to(tl.float32)
        weight = tl.load(weight_ptr + channel, mask=inside, other=1.0).to(tl.float32)
        bias = tl.load(bias_ptr + channel, mask=inside, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * weight + bias
        if APPLY_SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + base + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _geglu_kernel(x_ptr, out_ptr, inner, BLOCK: tl.constexpr):
    # one program per (row, block of columns): out[r, j] = x[r, j] * gelu(x[r, inner + j])
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = columns < inner
    hidden = tl.load(x_ptr + row * 2 * inner + columns, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(x_ptr + row * 2 * inner + inner + columns, mask=inside, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    tl.store(out_ptr + row * inner + columns, (hidden * gelu).to(out_ptr.dtype.element_ty), mask=inside)


def check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton kernels of difframe-cuda-kernels run on NVIDIA GPUs; got a tensor on {tensor.device}. Move "
            "the model to 'cuda', or set TRITON_INTERPRET=1 before importing them to run them (slowly) on the CPU."
        )


def group_norm(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, *, silu: bool
) -> torch.Tensor:
    """``F.group_norm`` (then ``F.silu`` when ``silu``) of an (N, C, *spatial) tensor, in one kernel."""
    check_device(x)
    x = x.contiguous()
    batch, channels = x.shape[:2]
    if channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    spatial = x[0, 0].numel()
    group_numel = channels // num_groups * spatial
    out = torch.empty_like(x)
    block = min(max(triton.next_power_of_2(group_numel), 16), 4096)
    _group_norm_kernel[(batch * num_groups,)](
        x,
        weight,
        bias,
        out,
        group_numel,
        channels // num_groups,
        spatial,
        num_groups,
        eps,
        APPLY_SILU=silu,
        BLOCK=block,
    )
    return out


def geglu(x: torch.Tensor) -> torch.Tensor:
    """``hidden * F.gelu(gate)`` where ``hidden, gate = x.chunk(2, dim=-1)``, in one kernel."""
    check_device(x)
    x = x.contiguous()
    inner = x.shape[-1] // 2
    rows = x.numel() // x.shape[-1]
    out = x.new_empty(*x.shape[:-1], inner)
    block = min(max(triton.next_power_of_2(inner), 16), 1024)
    _geglu_kernel[(rows, triton.cdiv(inner, block))](x, out, inner, BLOCK=block)
    return out
