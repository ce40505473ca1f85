"""Each distillation loss against values computed by hand with explicit loops, plus the
properties the papers state: KD's gradient, RKD's scale and translation invariance, DKD's
decomposition of KD, the invariances of DIST, logit standardization and attention maps."""

from __future__ import annotations

import math

import pytest
import torch

from kdpipe.train.losses import (
    HintRegressor,
    at_loss,
    dist_loss,
    dkd_loss,
    hint_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    standardized_kd_loss,
)
from kdpipe.train.losses.dkd import nckd_loss, tckd_loss


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


# ----------------------------------------------------------------------------- DKD (Zhao 2022)
LABELS = [2, 3, 0]  # the target class of each row of STUDENT / TEACHER


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def hand_tckd_nckd(s_rows: list[list[float]], t_rows: list[list[float]], labels: list[int],
                   t: float) -> tuple[float, float]:
    """Both DKD parts from their definitions: the binary split, and the softmax over the
    non-target classes alone (no masking trick)."""
    tckd = nckd = 0.0
    for s, te, y in zip(s_rows, t_rows, labels, strict=True):
        ps, pt = softmax(s, t), softmax(te, t)
        tckd += kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [j for j in range(len(s)) if j != y]
        nckd += kl(softmax([te[j] for j in others], t), softmax([s[j] for j in others], t))
    n = len(s_rows)
    return tckd / n * t * t, nckd / n * t * t


@pytest.mark.parametrize("alpha, beta, t", [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 3.0, 10.0)])
def test_dkd_loss_matches_hand_computed_parts(alpha, beta, t):
    tckd, nckd = hand_tckd_nckd(STUDENT, TEACHER, LABELS, t)
    got = dkd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS),
                   alpha, beta, t)
    assert got.item() == pytest.approx(alpha * tckd + beta * nckd, rel=1e-4)


def test_dkd_with_beta_zero_is_alpha_tckd_and_alpha_zero_is_beta_nckd():
    s, te, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    tckd, nckd = hand_tckd_nckd(STUDENT, TEACHER, LABELS, 4.0)
    assert dkd_loss(s, te, y, 1.5, 0.0, 4.0).item() == pytest.approx(1.5 * tckd, rel=1e-4)
    assert dkd_loss(s, te, y, 0.0, 2.0, 4.0).item() == pytest.approx(2.0 * nckd, rel=1e-4)
    assert tckd_loss(s, te, y, 4.0).item() == pytest.approx(tckd, rel=1e-4)
    assert nckd_loss(s, te, y, 4.0).item() == pytest.approx(nckd, rel=1e-4)


@pytest.mark.parametrize("row", range(3))
def test_dkd_reassembles_kd_with_beta_one_minus_teacher_target_probability(row):
    # The paper's reformulation: KD = TCKD + (1 - p_t^teacher) NCKD, per sample.
    s, te, y = torch.tensor([STUDENT[row]]), torch.tensor([TEACHER[row]]), LABELS[row]
    beta = 1.0 - softmax(TEACHER[row], 4.0)[y]
    got = dkd_loss(s, te, torch.tensor([y]), 1.0, beta, 4.0)
    assert got.item() == pytest.approx(kd_loss(s, te, 4.0).item(), rel=1e-4)


def test_dkd_is_zero_for_equal_logits_and_finite_for_a_confident_student():
    te, y = torch.tensor(TEACHER), torch.tensor(LABELS)
    assert dkd_loss(te.clone(), te, y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # p_t = 1 in float32: 1 - p_t would be 0 and its log -inf in the probability-space form.
    confident = torch.full((3, 4), -60.0)
    confident[torch.arange(3), y] = 60.0
    confident.requires_grad_(True)
    loss = dkd_loss(confident, te, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(confident.grad).all()


# ---------------------------------------------------------------------------- DIST (Huang 2022)
def pearson(u: list[float], v: list[float]) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    return cov / math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))


def hand_dist(s_rows: list[list[float]], t_rows: list[list[float]], beta: float, gamma: float,
              t: float) -> float:
    ys = [softmax(r, t) for r in s_rows]
    yt = [softmax(r, t) for r in t_rows]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ys, yt, strict=True)) / len(ys)
    classes = range(len(ys[0]))
    intra = 1 - sum(pearson([r[j] for r in ys], [r[j] for r in yt]) for j in classes) / len(classes)
    return t * t * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta, gamma, t", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0),
                                            (0.0, 1.0, 4.0)])
def test_dist_loss_matches_hand_computed_correlations(beta, gamma, t):
    got = dist_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), beta, gamma, t)
    assert got.item() == pytest.approx(hand_dist(STUDENT, TEACHER, beta, gamma, t), rel=1e-5)


def test_dist_loss_is_zero_for_equal_logits_and_ignores_sample_and_class_order():
    te = torch.tensor(TEACHER)
    # Not exactly 0: the 1e-8 added to the norms' product, against centred probabilities with
    # squared norms down to 1.6e-3 at T = 4, leaves up to 6e-6 per correlation, times T^2 = 16.
    assert dist_loss(te.clone(), te, 1.0, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-3)
    assert dist_loss(te.clone(), te, 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.tensor(STUDENT)
    base = dist_loss(s, te, 1.0, 1.0, 4.0)
    rows, cols = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(dist_loss(s[rows], te[rows], 1.0, 1.0, 4.0), base)
    torch.testing.assert_close(dist_loss(s[:, cols], te[:, cols], 1.0, 1.0, 4.0), base)


# -------------------------------------------------------------- logit standardization (Sun 2024)
def zscore(row: list[float]) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased
    return [(v - mean) / (std + 1e-7) for v in row]


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_standardized_kd_matches_hand_computed_kl_of_zscores(t):
    expected = sum(kl(softmax(zscore(te), t), softmax(zscore(s), t))
                   for s, te in zip(STUDENT, TEACHER, strict=True)) / len(STUDENT) * t * t
    got = standardized_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_standardized_kd_ignores_each_samples_logit_scale_and_shift():
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    base = standardized_kd_loss(s, te, 2.0)
    scale, shift = torch.tensor([[0.5], [3.0], [7.0]]), torch.tensor([[1.0], [-4.0], [0.3]])
    torch.testing.assert_close(standardized_kd_loss(s * scale + shift, te, 2.0), base,
                               rtol=1e-4, atol=1e-6)
    # A student whose logits are an affine map of the teacher's already matches it: plain KD
    # would still ask for the teacher's range.
    assert standardized_kd_loss(3.0 * te + 2.0, te, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(3.0 * te + 2.0, te, 2.0).item() > 0.1


# ------------------------------------------------------------ attention transfer (Zagoruyko 2017)
def hand_at(s: torch.Tensor, t: torch.Tensor) -> float:
    """Per sample: the map mean_c f^2 over every position, its L2 norm, then the squared
    differences averaged over samples and positions (same spatial size)."""
    b, _, h, w = t.shape
    total = 0.0
    for i in range(b):
        maps = []
        for f in (s[i].tolist(), t[i].tolist()):
            q = [sum(f[c][y][x] ** 2 for c in range(len(f))) / len(f)
                 for y in range(h) for x in range(w)]
            n = math.sqrt(sum(v * v for v in q))
            maps.append([v / n for v in q])
        total += sum((a - c) ** 2 for a, c in zip(*maps, strict=True))
    return total / (b * h * w)


def test_at_loss_matches_hand_computed_attention_maps():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)  # C differs
    assert at_loss(s, t).item() == pytest.approx(hand_at(s, t), rel=1e-5)


def test_at_loss_is_zero_for_equal_maps_and_ignores_feature_scale():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert at_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-9)
    torch.testing.assert_close(at_loss(5.0 * s, t), at_loss(s, t))


def test_at_loss_resizes_the_student_map_to_the_teachers_size():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(2, 4, 4, 4, generator=g)
    # The teacher's map at twice the resolution, each value in a 2x2 block, with twice the
    # channels: bilinear downsizing by 2 averages each block, giving back the teacher's map.
    s = torch.cat([t, t], 1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert at_loss(s, t).item() == pytest.approx(0.0, abs=1e-9)
    assert at_loss(torch.randn(2, 4, 8, 8, generator=g), t).item() > 0
    with pytest.raises(ValueError, match="feature maps"):
        at_loss(torch.randn(2, 4), t)


def test_at_gradient_reaches_the_student_only():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    at_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
