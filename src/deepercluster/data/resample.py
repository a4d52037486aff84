"""Pillow's antialiased bilinear resize of a small crop, as two float32 matrix products.

At 32 px a Pillow resize costs ~30 us, nearly all of it per-call work (filter tables, an
intermediate image, two passes), and the crop before it another ~9 us: a fifth of a CIFAR
training item. The same filter written as two dense weight matrices, (R, h) for the rows and
(w, R) for the columns, makes the resize two small BLAS products on a view of the decoded
pixels, with the weights cached per input size, output size and source window. A product
costs ``h * w * R`` multiply-adds where Pillow's pass costs about ``h * R`` times the filter's
few taps, so the dense form only pays on small crops: ``dense_resize_pays`` draws that line
from measurements (see the comment above it).

The weights are Pillow's (``libImaging/Resample.c``: a triangle of half-width
``max(in / out, 1)`` centred on ``(i + 0.5) * in / out``, normalised per output pixel), but
the products run in float32 without Pillow's fixed-point weights and its rounding to 8 bits
after each pass: an output differs from Pillow's by at most one grey level (tested).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["bilinear_weights", "dense_resize_pays", "resize_scaled"]

# Multiply-adds of the two products, 3 h R (w + R), up to which they beat Pillow's resize.
# Measured per resized crop (crop, resize, normalise), square crops of n pixels to R, one
# thread: R = 32, n = 16-96: 0.59-0.71x of Pillow's time (0.07-1.2 M); R = 64, n = 32-69:
# 0.47-0.63x (0.6-1.8 M), n = 96: 0.98x (3.0 M), n = 192: 1.05x (9.4 M); R = 224, n = 336:
# 1.16x, n = 448: 1.43x. Every CIFAR crop to 32 px (at most 0.2 M) takes the dense path;
# photos to 224 px keep Pillow's.
_DENSE_MAX_MACS = 1 << 21


def dense_resize_pays(height: int, width: int, size: int) -> bool:
    """Whether a ``height`` x ``width`` crop to ``size`` x ``size`` should use ``resize_scaled``."""
    return 3 * height * size * (width + size) <= _DENSE_MAX_MACS


@lru_cache(maxsize=512)
def bilinear_weights(
    n_in: int, n_out: int, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Pillow's BILINEAR weights resampling ``[start, end)`` of ``n_in`` pixels to ``n_out``.

    Args:
        n_in: Input pixels along the axis.
        n_out: Output pixels.
        start, end: The source window, in input pixel coordinates (Pillow's ``box``);
            default the whole axis. The filter may reach past the window, not past the axis.

    Returns:
        Read-only float64 array (n_out, n_in); row i sums to 1 and holds the weight of every
        input pixel in output pixel i.
    """
    end = float(n_in) if end is None else end
    if n_in <= 0 or n_out <= 0 or not end > start:
        raise ValueError(
            f"sizes must be positive and the window non-empty, got {n_in} -> {n_out} "
            f"over [{start}, {end})"
        )
    scale = (end - start) / n_out
    # Downscaling widens the triangle to cover every input pixel (antialiasing).
    support = max(scale, 1.0)
    centre = start + (np.arange(n_out) + 0.5) * scale
    # Pillow restricts each row to [int(c - s + 0.5), int(c + s + 0.5)) within the axis; the
    # triangle is zero outside that window anyway, so only the axis' bounds matter.
    distance = (np.arange(n_in)[None, :] + 0.5 - centre[:, None]) / support
    weights = np.maximum(1.0 - np.abs(distance), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=512)
def _column_weights(width: int, size: int, start: float, end: float) -> np.ndarray:
    """(width, size) float32: the right-hand factor of the column pass."""
    return np.ascontiguousarray(bilinear_weights(width, size, start, end).T, dtype=np.float32)


@lru_cache(maxsize=512)
def _row_weights(
    height: int, size: int, start: float, end: float, scale: tuple[float, float, float]
) -> np.ndarray:
    """(3, size, height) float32: the row pass's weights, times each channel's scale."""
    per_channel = np.asarray(scale, dtype=np.float64)[:, None, None]
    rows = bilinear_weights(height, size, start, end)[None]
    weights: np.ndarray = (per_channel * rows).astype(np.float32)
    return weights


def resize_scaled(
    pixels: np.ndarray,
    size: int,
    scale: tuple[float, float, float],
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Resize (h, w, 3) uint8 pixels to (3, size, size) float32, channel c times ``scale[c]``.

    Args:
        pixels: (h, w, 3) uint8 array with any strides, e.g. a crop of a decoded image.
        size: Output side.
        scale: Per-channel factor folded into the weights (a normalisation's 1 / (255 std)).
        box: ``(left, top, right, bottom)`` source window, as Pillow's ``resize(box=...)``;
            default all of ``pixels``.

    Returns:
        Contiguous float32 (3, size, size), channels first, rows then columns.
    """
    height, width = pixels.shape[:2]
    left, top, right, bottom = (0.0, 0.0, float(width), float(height)) if box is None else box
    # One strided copy to channels-first float32, then the columns of every channel's rows in
    # one product (3h, w) @ (w, R), then each channel's rows: (R, h) @ (h, R), three at once.
    planes = pixels.transpose(2, 0, 1).astype(np.float32)
    columns = planes.reshape(3 * height, width) @ _column_weights(width, size, left, right)
    rows = _row_weights(height, size, top, bottom, scale)
    out: np.ndarray = np.matmul(rows, columns.reshape(3, height, size))
    return out
