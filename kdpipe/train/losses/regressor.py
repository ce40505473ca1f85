"""FitNets' regressor r(v_g; W_r): maps the student's guided layer onto the teacher's hint layer.

Romero et al. 2015 (https://arxiv.org/abs/1412.6550, section 2.2) use a convolutional regressor
so that it stays small: a fully connected one between two feature maps would need as many weights
as both maps' sizes multiplied. kdpipe's choice, which covers every student/teacher pair:

- a 3x3 convolution from the student's channels to the teacher's; when the student map is an
  integer multiple of the teacher's size it strides by that factor (e.g. 32x32 -> 16x16 with
  stride 2), so the regressor sees a 3x3 neighbourhood and downsamples in one learned step;
- otherwise (the student map is smaller, or the ratio is not an integer) a stride-1 convolution
  followed by bilinear resampling to the teacher's size;
- then batch normalization, which absorbs the scale difference between the two networks'
  activations. There is no output non-linearity, so every output can move towards the hint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HintRegressor(nn.Module):
    """`[B, in_ch, *in_hw] -> [B, out_ch, *out_hw]`: conv 3x3 (strided or resampled) + BN."""

    def __init__(self, in_ch: int, out_ch: int, in_hw: tuple[int, int],
                 out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        stride = _integer_stride(tuple(in_hw), self.out_hw)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride or 1, padding=1, bias=False)
        self.resample = stride is None
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.resample:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.bn(x)


def _integer_stride(in_hw: tuple[int, ...], out_hw: tuple[int, int]) -> int | None:
    """The stride s with ceil(in / s) == out in both dimensions (what a padded 3x3 conv gives),
    or None when no single integer stride maps `in_hw` onto `out_hw`."""
    (h, w), (oh, ow) = in_hw, out_hw
    if h < oh or w < ow or h % oh or w % ow or h // oh != w // ow:
        return None
    return h // oh
