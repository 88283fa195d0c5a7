"""Attention readouts on frozen video features, and the four 4DS task heads.

``AttentionReadout`` follows the readout of the official 4DS release
(``representations4d/models/readout.py``, itself V-JEPA's attentive probe):
LayerNorm on the features, a learned temporal position embedding, queries
(learned ones, external ones projected by a linear layer, or the sum of both)
cross-attending to the flattened (time x space) features, a dense layer with a
residual from the query, LayerNorm, a 4x MLP with a residual, and the output
layer. There is no self-attention between queries: each one reads the video on
its own. One deliberate difference: no key bias (see ``AttentionReadout``).

The task heads only decide what a query is and how its output is read:

- ``DepthHead``: one learned query per output patch of ``patch`` (t, h, w)
  pixels; each decodes its patch of log-depth (the official depth readout uses
  2x8x8 patches), added to the training set's mean log-depth map.
- ``TrackingHead``: a query per point (t, y, x), Fourier-encoded and projected;
  it predicts, for every frame, the offset (dx, dy) from the query point and a
  visibility logit.
- ``PoseHead``: one learned query per frame predicting the camera pose
  relative to frame 0 as a 6D rotation (the first two columns of R, Zhou et
  al. 2019, made orthonormal by Gram-Schmidt) and a translation.
- ``BoxHead``: a query per first-frame box (x0, y0, x1, y1); it predicts the
  per-frame offsets of the box corners.

Coordinates fed to and read from heads are normalised to [0, 1] (x / W,
y / H, (t + 0.5) / T) so a head does not depend on the image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def features_to_readout(features: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
    """(B, T', H', W', D) encoder grid -> (B, T, H'*W', D) readout input.

    The official pipeline resizes the token grid's time axis back to the
    input's frame count before the readout (``EncoderToReadout``, cubic); we
    interpolate linearly, which needs no kernel choice and never overshoots.
    """
    b, t, h, w, d = features.shape
    x = features.reshape(b, t, h * w, d)
    if num_frames is None or num_frames == t:
        return x
    x = x.permute(0, 2, 3, 1).reshape(b, h * w * d, t)  # interpolate along time
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return x.reshape(b, h * w, d, num_frames).permute(0, 3, 1, 2).contiguous()


def fourier_encode(coords: torch.Tensor, num_bands: int = 8) -> torch.Tensor:
    """(..., k) coordinates in [0, 1] -> (..., k * (2 * num_bands + 1)) features.

    Raw coordinates plus sin/cos at octave frequencies: a linear projection of
    raw coordinates alone cannot tell nearby points apart finely enough.
    """
    freqs = (2.0 ** torch.arange(num_bands, dtype=coords.dtype, device=coords.device)) * math.pi
    angles = coords[..., None] * freqs  # (..., k, bands)
    enc = torch.cat([coords[..., None], angles.sin(), angles.cos()], dim=-1)
    return enc.flatten(-2)


def fourier_dim(num_coords: int, num_bands: int = 8) -> int:
    return num_coords * (2 * num_bands + 1)


class AttentionReadout(nn.Module):
    """Cross-attention readout: queries read (B, T, N, C) features -> (B, Q, num_outputs)."""

    def __init__(self, *, feature_dim: int, num_outputs: int, num_frames: int,
                 width: int = 1024, num_heads: int = 16, num_queries: int = 0,
                 query_dim: int | None = None):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"readout width {width} must be a multiple of its heads {num_heads}")
        if not num_queries and query_dim is None:
            raise ValueError("a readout needs learned queries (num_queries) or external ones")
        self.num_heads = num_heads
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.temporal_posenc = nn.Parameter(torch.empty(num_frames, feature_dim))
        # learned queries, external queries projected, or both (their sum)
        self.query = nn.Parameter(torch.empty(num_queries, width)) if num_queries else None
        self.query_proj = nn.Linear(query_dim, width) if query_dim is not None else None
        # No key bias (the official readout has one): it adds q.b to every logit of a query
        # alike, which softmax ignores, so its gradient is rounding noise that Adam amplifies.
        self.key = nn.Linear(feature_dim, width, bias=False)
        self.value = nn.Linear(feature_dim, width)
        self.dense = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width))
        self.output = nn.Linear(width, num_outputs)
        nn.init.normal_(self.temporal_posenc, std=0.02)
        if self.query is not None:
            nn.init.normal_(self.query, std=0.02)

    def forward(self, features: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, N, C); queries (B, Q, query_dim) when built with ``query_dim``."""
        b, t, n, _ = features.shape
        x = self.feature_norm(features) + self.temporal_posenc[:t, None, :]  # (B, T, N, C)
        x = x.reshape(b, t * n, -1)  # (B, T*N, C)
        q = 0
        if self.query is not None:
            q = self.query.expand(b, -1, -1)  # (B, Q, W)
        if self.query_proj is not None:
            q = q + self.query_proj(queries)  # (B, Q, W)
        token = F.scaled_dot_product_attention(
            self._heads(q), self._heads(self.key(x)), self._heads(self.value(x)))  # (B, h, Q, W/h)
        token = token.transpose(1, 2).flatten(2)  # (B, Q, W)
        token = q + self.dense(token)
        token = token + self.mlp(self.mlp_norm(token))
        return self.output(token)  # (B, Q, num_outputs)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        return x.reshape(b, s, self.num_heads, w // self.num_heads).transpose(1, 2)


class DepthHead(nn.Module):
    """Dense depth: one learned query per (t, h, w) output patch; returns log-depth (B, T, H, W).

    ``log_depth_offset`` (a scalar or a (T, H, W) map, e.g. the training set's
    mean log-depth per pixel) is added to the output: the readout learns the
    deviation from it instead of spending its first steps on the scale.
    """

    def __init__(self, *, feature_dim: int, num_frames: int, image_size: int,
                 patch: tuple[int, int, int] = (2, 8, 8), width: int = 1024,
                 num_heads: int = 16, log_depth_offset: float | torch.Tensor = 0.0):
        super().__init__()
        pt, ph, pw = patch
        if num_frames % pt or image_size % ph or image_size % pw:
            raise ValueError(f"depth patch {patch} must divide the clip "
                             f"{num_frames}x{image_size}x{image_size}")
        self.patch = patch
        self.grid = (num_frames // pt, image_size // ph, image_size // pw)
        self.num_frames = num_frames
        self.readout = AttentionReadout(
            feature_dim=feature_dim, num_outputs=pt * ph * pw, num_frames=num_frames,
            width=width, num_heads=num_heads, num_queries=math.prod(self.grid))
        self.register_buffer("log_depth_offset", torch.as_tensor(log_depth_offset).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T', H', W', D) -> log-depth (B, T, H, W)."""
        out = self.readout(features_to_readout(features, self.num_frames))  # (B, Q, pt*ph*pw)
        (gt, gh, gw), (pt, ph, pw) = self.grid, self.patch
        out = out.reshape(-1, gt, gh, gw, pt, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(-1, gt * pt, gh * ph, gw * pw) + self.log_depth_offset


class TrackingHead(nn.Module):
    """Point tracks: queries (B, Q, 3) as normalised (t, y, x) -> per-frame positions, visibility.

    Returns ``xy`` (B, Q, T, 2) normalised (x, y) and ``visible_logit`` (B, Q, T).
    Positions are predicted as offsets from the query point, so an untrained
    head starts from "the point stays where it was queried".
    """

    def __init__(self, *, feature_dim: int, num_frames: int, width: int = 1024,
                 num_heads: int = 16, num_bands: int = 8):
        super().__init__()
        self.num_frames, self.num_bands = num_frames, num_bands
        self.readout = AttentionReadout(
            feature_dim=feature_dim, num_outputs=3 * num_frames, num_frames=num_frames,
            width=width, num_heads=num_heads, query_dim=fourier_dim(3, num_bands))

    def forward(self, features: torch.Tensor, query_points: torch.Tensor) -> dict:
        out = self.readout(features_to_readout(features, self.num_frames),
                           fourier_encode(query_points, self.num_bands))
        out = out.reshape(*out.shape[:2], self.num_frames, 3)  # (B, Q, T, 3)
        start = query_points[..., None, [2, 1]]  # (B, Q, 1, 2) as (x, y)
        return {"xy": start + out[..., :2], "visible_logit": out[..., 2]}


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): Gram-Schmidt on two column vectors (Zhou et al. 2019).

    A continuous parametrisation of SO(3), unlike quaternions or Euler angles,
    so a regressor never has to jump between equivalent outputs.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


class PoseHead(nn.Module):
    """Camera pose: one query per frame -> pose relative to frame 0, (B, T, 4, 4).

    The output is 6D rotation + translation; the identity's 6D code is added so
    an untrained head predicts a still camera. ``translation_scale`` (e.g. the
    training set's translation spread, in metres) rescales the regressed
    translation so its target is of order one.
    """

    _IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def __init__(self, *, feature_dim: int, num_frames: int, width: int = 1024,
                 num_heads: int = 16, translation_scale: float = 1.0):
        super().__init__()
        self.num_frames = num_frames
        self.readout = AttentionReadout(
            feature_dim=feature_dim, num_outputs=9, num_frames=num_frames,
            width=width, num_heads=num_heads, num_queries=num_frames)
        self.register_buffer("identity_6d", torch.tensor(self._IDENTITY_6D))
        self.register_buffer("translation_scale", torch.tensor(float(translation_scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.readout(features_to_readout(features, self.num_frames))  # (B, T, 9)
        pose = torch.zeros(*out.shape[:2], 4, 4, dtype=out.dtype, device=out.device)
        pose[..., :3, :3] = rotation_from_6d(out[..., :6] + self.identity_6d)
        pose[..., :3, 3] = out[..., 6:] * self.translation_scale
        pose[..., 3, 3] = 1.0
        return pose  # (B, T, 4, 4) frame-t camera to frame-0 camera


class BoxHead(nn.Module):
    """Object boxes: first-frame boxes (B, M, 4) normalised (x0, y0, x1, y1) -> (B, M, T, 4)."""

    def __init__(self, *, feature_dim: int, num_frames: int, width: int = 1024,
                 num_heads: int = 16, num_bands: int = 8):
        super().__init__()
        self.num_frames, self.num_bands = num_frames, num_bands
        self.readout = AttentionReadout(
            feature_dim=feature_dim, num_outputs=4 * num_frames, num_frames=num_frames,
            width=width, num_heads=num_heads, query_dim=fourier_dim(4, num_bands))

    def forward(self, features: torch.Tensor, first_boxes: torch.Tensor) -> torch.Tensor:
        out = self.readout(features_to_readout(features, self.num_frames),
                           fourier_encode(first_boxes, self.num_bands))
        return first_boxes[..., None, :] + out.reshape(*out.shape[:2], self.num_frames, 4)
