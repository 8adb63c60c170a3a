"""Rotary position embedding of gpt-oss: YaRN-scaled frequencies, NeoX half-split rotation.

Computed exactly as transformers' `_compute_yarn_parameters` (and OpenAI's `RotaryEmbedding`) do, in float32:

    freq[i]     = theta ** (2i / d)                                  i = 0 .. d/2 - 1
    low, high   = correction_range(beta_fast, beta_slow)             corr(b) = d ln(L / (2 pi b)) / (2 ln theta)
    ramp[i]     = clamp((i - low) / (high - low), 0, 1)
    inv_freq[i] = 1 / (factor freq[i]) * ramp[i] + 1 / freq[i] * (1 - ramp[i])
    cos, sin    = cos(p inv_freq) * c, sin(p inv_freq) * c           c = 0.1 ln(factor) + 1 (the concentration)
    rotate(x)   = [x1 cos - x2 sin, x2 cos + x1 sin]                 x1, x2 = first and second half of a head

L is the original context (4096). `truncate` floors low and ceils high first; gpt-oss's config says
truncate = false. llama.cpp always truncates ([8, 18] instead of [8.09, 17.40] for the real config):
`ggml_rounding=True` reproduces that.

llama.cpp also computes the angles its own way (ggml's CPU rope cache, `ggml_angles=True` reproduces it): per
position, theta = p, and for each pair of dimensions in turn the YaRN mix of theta / factor and theta, then
theta *= base^(-2/d), all in float32. The repeated multiplication rounds once per pair, so the angle of pair i
carries up to i roundings of a number as large as p: at position 8,000 about 1e-2 rad against 5e-4 for
transformers' single product p * inv_freq[i]. That is llama.cpp's deviation growing with the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import ModelSpec, correction_range


@dataclass(frozen=True, eq=False)
class Rope:
    inv_freq: np.ndarray  # float32 [head_dim / 2]
    concentration: float
    ggml: "GgmlAngles | None" = None  # compute the angles as ggml's CPU rope does

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 cos and sin [T, head_dim / 2] for integer positions [T]."""
        if self.ggml is not None:
            angles = self.ggml.angles(np.asarray(positions))
        else:
            angles = np.asarray(positions, dtype=np.float32)[:, None] * self.inv_freq[None, :]
        c = np.float32(self.concentration)
        return np.cos(angles) * c, np.sin(angles) * c

    @staticmethod
    def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x [T, heads, head_dim] rotated by per-position cos/sin [T, head_dim / 2] (NeoX halves)."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = cos[:, None, :], sin[:, None, :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@dataclass(frozen=True)
class GgmlAngles:
    """ggml's float32 rope angles (ggml_rope_cache_init + rope_yarn, CPU)."""

    theta_scale: float  # powf(base, -2 / d)
    freq_scale: float  # 1 / factor
    low: float
    high: float
    pairs: int

    def angles(self, positions: np.ndarray) -> np.ndarray:
        f32 = np.float32
        theta = positions.astype(f32)
        out = np.empty((len(theta), self.pairs), f32)
        for i in range(self.pairs):
            y = f32(i - self.low) / f32(max(0.001, self.high - self.low))
            mix = f32(1.0) - f32(min(1.0, max(0.0, y)))  # the extrapolation share
            interp = f32(self.freq_scale) * theta
            out[:, i] = interp * (f32(1.0) - mix) + theta * mix
            theta = theta * f32(self.theta_scale)
        return out


def yarn_rope(spec: ModelSpec, ggml_rounding: bool = False, ggml_angles: bool = False) -> Rope:
    """The rope of a spec; `ggml_rounding` truncates the correction range as llama.cpp does; `ggml_angles`
    computes the angles as ggml's CPU rope does (see the module docstring)."""
    dim = spec.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)  # float32, as torch computes it
    # theta ** exponent correctly rounded to float32 (torch's own float32 pow is off by 1 ulp for a few entries)
    freq = (np.float64(spec.rope_theta) ** exponent.astype(np.float64)).astype(np.float32)
    extrapolation = np.float32(1.0) / freq
    theta_scale = float(np.float32(spec.rope_theta) ** np.float32(-2.0 / dim))
    if spec.rope_factor <= 1.0:
        return Rope(extrapolation, 1.0, GgmlAngles(theta_scale, 1.0, 0.0, 0.0, dim // 2) if ggml_angles else None)
    interpolation = np.float32(1.0) / (np.float32(spec.rope_factor) * freq)
    low, high = correction_range(spec, truncate=spec.rope_truncate or ggml_rounding)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extrapolation_share = np.float32(1.0) - ramp
    inv_freq = interpolation * (np.float32(1.0) - extrapolation_share) + extrapolation * extrapolation_share
    concentration = 0.1 * math.log(spec.rope_factor) + 1.0
    ggml = None
    if ggml_angles:
        freq_scale = np.float32(1.0) / np.float32(spec.rope_factor)
        ggml = GgmlAngles(theta_scale, float(freq_scale), low, high, dim // 2)
        concentration = float(np.float32(1.0) + np.float32(0.1) * np.log(np.float32(1.0) / freq_scale))
    return Rope(inv_freq.astype(np.float32), concentration, ggml)
