"""Memory-layout helpers of the quantizer kernels: flat views, strides, one-pass dots."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.quant import layout


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_flat_is_a_view_in_memory_order_and_unflat_inverts_it(memory_format):
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=memory_format)
    flat = layout.flat(x)
    assert flat is not None and flat.data_ptr() == x.data_ptr() and flat.dim() == 1
    back = layout.unflat(flat, x)
    assert torch.equal(back, x) and back.stride() == x.stride()


def test_channels_last_3d_and_non_dense_tensors():
    x = torch.randn(2, 3, 2, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(layout.unflat(layout.flat(x), x), x)
    strided = torch.randn(4, 6)[:, ::2]
    assert layout.flat(strided) is None
    dense = layout.dense(strided)
    assert dense.is_contiguous() and torch.equal(dense, strided)
    contiguous = torch.randn(3, 3)
    assert layout.dense(contiguous) is contiguous


def test_like_copies_only_when_the_strides_differ():
    reference = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    same = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert layout.like(same, reference) is same
    other = torch.randn(2, 3, 4, 4)
    matched = layout.like(other, reference)
    assert matched.stride() == reference.stride() and torch.equal(matched, other)


def test_flat_dot_equals_the_sum_of_products():
    a = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    b = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert float(layout.flat_dot(a, b)) == pytest.approx(float((a * b).sum()))
    assert float(layout.flat_dot(a, b.contiguous(memory_format=torch.channels_last))) == pytest.approx(float((a * b).sum()))


def test_inclusive_bounds_make_hardtanh_backward_inclusive():
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0, 2.0001])
    below, above = layout.inclusive_bounds(0.0, 2.0)
    mask = torch.ops.aten.hardtanh_backward(torch.ones_like(x), x, below, above)
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
