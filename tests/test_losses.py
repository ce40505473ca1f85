"""Each distillation loss against values computed by hand with explicit loops, plus the
properties the papers state: KD's gradient, RKD's scale and translation invariance."""

from __future__ import annotations

import math

import pytest
import torch

from kdpipe.train.losses import (
    HintRegressor,
    hint_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
)


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def sub(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


# ----------------------------------------------------------------------------- KD (Hinton 2015)
STUDENT = [[1.0, -0.5, 2.0, 0.3], [0.0, 0.2, -1.0, 1.5], [3.0, 1.0, 0.0, -2.0]]
TEACHER = [[2.0, 0.5, 1.0, -0.3], [-1.0, 0.7, 0.4, 2.5], [4.0, -1.0, 0.5, 0.0]]


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_kd_loss_matches_hand_computed_kl(t):
    expected = 0.0
    for s_row, t_row in zip(STUDENT, TEACHER, strict=True):
        p, q = softmax(t_row, t), softmax(s_row, t)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected = expected / len(STUDENT) * t * t
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(expected, rel=1e-4)  # float32 KL, times T^2


@pytest.mark.parametrize("t", [1.0, 4.0, 10.0])
def test_kd_gradient_is_t_times_q_minus_p_over_batch(t):
    student = torch.tensor(STUDENT, requires_grad=True)
    kd_loss(student, torch.tensor(TEACHER), t).backward()
    batch = len(STUDENT)
    for i, (s_row, t_row) in enumerate(zip(STUDENT, TEACHER, strict=True)):
        q, p = softmax(s_row, t), softmax(t_row, t)
        for j in range(len(q)):
            assert student.grad[i, j].item() == pytest.approx(t * (q[j] - p[j]) / batch, abs=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_leaves_the_teacher_alone():
    teacher = torch.tensor(TEACHER, requires_grad=True)
    loss = kd_loss(torch.tensor(TEACHER), teacher.detach(), 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert teacher.grad is None


def test_kd_loss_accepts_bf16_and_returns_float32():
    loss = kd_loss(torch.tensor(STUDENT).bfloat16(), torch.tensor(TEACHER).bfloat16(), 4.0)
    assert loss.dtype == torch.float32


# ------------------------------------------------------------------------ FitNets (Romero 2015)
def test_hint_loss_is_half_the_mean_squared_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    expected = 0.5 * sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)
    assert hint_loss(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_hint_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 8, 8))


@pytest.mark.parametrize("in_ch, out_ch, in_hw, out_hw", [
    (16, 32, (16, 16), (16, 16)),   # same size: stride 1
    (16, 32, (32, 32), (16, 16)),   # ResNet20 stage1 -> ResNet110 stage2 size: stride 2
    (32, 64, (32, 32), (8, 8)),     # stride 4
    (96, 64, (4, 4), (8, 8)),       # MobileNetV2 final stage (4x4) -> ResNet final stage (8x8)
    (24, 10, (6, 6), (4, 4)),       # no integer stride: resample
])
def test_hint_regressor_maps_student_onto_teacher_shape(in_ch, out_ch, in_hw, out_hw):
    regressor = HintRegressor(in_ch, out_ch, in_hw, out_hw)
    out = regressor(torch.randn(2, in_ch, *in_hw))
    assert out.shape == (2, out_ch, *out_hw)
    hint_loss(out, torch.randn_like(out)).backward()
    assert all(p.grad is not None for p in regressor.parameters())


# ----------------------------------------------------------------------------- RKD (Park 2019)
EMB_S = [[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [2.0, 2.0, 0.0], [-1.0, 0.0, 1.0]]
EMB_T = [[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-2.0, 1.0]]  # another dimension, like a real pair


def hand_distance_loss(s: list[list[float]], t: list[list[float]]) -> float:
    n = len(s)

    def psi(e: list[list[float]]) -> list[list[float]]:
        d = [[norm(sub(e[i], e[j])) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    ps, pt = psi(s), psi(t)
    return sum(huber(ps[i][j] - pt[i][j]) for i in range(n) for j in range(n)) / n**2


def hand_angle_loss(s: list[list[float]], t: list[list[float]]) -> float:
    n = len(s)

    def cos(e: list[list[float]], i: int, j: int, k: int) -> float:
        if i == j or k == j:
            return 0.0  # a zero difference vector: no angle, as in the authors' code
        a, b = sub(e[i], e[j]), sub(e[k], e[j])
        return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))

    total = sum(huber(cos(s, i, j, k) - cos(t, i, j, k))
                for i in range(n) for j in range(n) for k in range(n))
    return total / n**3


def test_rkd_distance_loss_matches_hand_computed_value():
    got = rkd_distance_loss(torch.tensor(EMB_S), torch.tensor(EMB_T))
    assert got.item() == pytest.approx(hand_distance_loss(EMB_S, EMB_T), rel=1e-5)


def test_rkd_angle_loss_matches_hand_computed_value():
    got = rkd_angle_loss(torch.tensor(EMB_S), torch.tensor(EMB_T))
    assert got.item() == pytest.approx(hand_angle_loss(EMB_S, EMB_T), rel=1e-5)


def test_rkd_huber_switches_to_linear_beyond_one():
    # Far-apart relations: a pair whose normalized distances differ by more than delta = 1.
    s = [[0.0], [1.0], [2.0], [30.0]]
    t = [[0.0], [10.0], [20.0], [21.0]]
    got = rkd_distance_loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(hand_distance_loss(s, t), rel=1e-5)


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_losses_are_scale_and_translation_invariant(loss):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 16, generator=g), torch.randn(8, 5, generator=g)
    base = loss(s, t)
    assert base.item() > 0
    changes = [(3.7 * s, t), (s, 0.2 * t), (s + 5.0, t), (s, t - 2.0), (0.5 * s + 1, 4 * t - 3)]
    for s2, t2 in changes:
        torch.testing.assert_close(loss(s2, t2), base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_gradients_reach_the_student_only_and_stay_finite(loss):
    s = torch.randn(6, 4)
    s[1] = s[0]  # two coincident points: distance 0, no angle
    s.requires_grad_(True)
    t = torch.randn(6, 3, requires_grad=True)
    loss(s, t).backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_loss_is_zero_for_identical_relations(loss):
    t = torch.randn(5, 3)
    rotation = torch.linalg.qr(torch.randn(3, 3))[0]
    assert loss(2.0 * t @ rotation + 1.0, t).item() == pytest.approx(0.0, abs=1e-6)
