"""Evaluation metrics: generic distances checked against closed forms, the digits classifier
retrained and checked against its shipped weights, and video helpers on clips rendered here."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F

from mmdiff.eval import digits
from mmdiff.eval.metrics import (distinct_n, frechet_distance, frechet_from_stats, sliced_wasserstein,
                                 unigram_entropy, wasserstein_1d)


# ----------------------------------------------------------------------------- Fréchet distance

def _closed_form(mu_a, cov_a, mu_b, cov_b):
    # Textbook formula with scipy's general matrix square root, independent of our eigh route.
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def _random_gaussian(rng, dim):
    m = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), m @ m.T / dim + 0.1 * np.eye(dim)


def test_frechet_from_stats_matches_closed_form():
    rng = np.random.default_rng(0)
    (mu_a, cov_a), (mu_b, cov_b) = _random_gaussian(rng, 6), _random_gaussian(rng, 6)
    assert frechet_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(_closed_form(mu_a, cov_a, mu_b, cov_b), rel=1e-9)
    # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2 by hand.
    a, b = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = 3.0 ** 2 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_from_stats([0, 0], np.diag(a), [3, 0], np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(1)
    (mu_a, cov_a), (mu_b, cov_b) = _random_gaussian(rng, 4), _random_gaussian(rng, 4)
    exact = _closed_form(mu_a, cov_a, mu_b, cov_b)
    errors = []
    for n in (1_000, 100_000):
        a = rng.multivariate_normal(mu_a, cov_a, size=n)
        b = rng.multivariate_normal(mu_b, cov_b, size=n)
        errors.append(abs(frechet_distance(torch.from_numpy(a).float(), b) - exact))
    assert errors[1] < errors[0] and errors[1] < 0.01 * exact


def test_frechet_distance_handles_singular_covariances_and_is_symmetric():
    rng = np.random.default_rng(2)
    a = np.zeros((500, 8))
    a[:, :2] = rng.normal(size=(500, 2))  # rank 2 in 8 dimensions, like dead ReLU units
    b = rng.normal(size=(400, 8))
    d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert math.isfinite(d_ab) and d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.ones((5, 3)), np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"matrix \(N, D\)"):
        frechet_distance(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 2), np.nan), np.ones((5, 2)))


# ----------------------------------------------------------------------------- Wasserstein

def test_wasserstein_1d_matches_scipy_for_unequal_sizes():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 73, generator=gen, dtype=torch.float64) * 2 + 1
    ours = wasserstein_1d(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(scipy.stats.wasserstein_distance(a[i], b[i]), rel=1e-9)


def test_sliced_wasserstein_same_distribution_shrinks_with_n():
    gen = torch.Generator().manual_seed(0)
    dists = [sliced_wasserstein(torch.randn(n, 8, generator=gen), torch.randn(n, 8, generator=gen),
                                num_projections=64, generator=gen) for n in (100, 1_000, 10_000)]
    assert dists[0] > dists[1] > dists[2] and dists[2] < 0.03


def test_sliced_wasserstein_of_shifted_1d_gaussians_is_the_shift():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5_000, 1, generator=gen, dtype=torch.float64)
    assert sliced_wasserstein(a, a + 0.7, num_projections=8, generator=gen) == pytest.approx(0.7, rel=1e-9)
    b = torch.randn(5_000, 1, generator=gen, dtype=torch.float64) - 1.5
    assert sliced_wasserstein(a, b, generator=gen) == pytest.approx(1.5, abs=0.05)


# ----------------------------------------------------------------------------- text

def test_distinct_n_by_hand():
    seqs = [["a", "b", "a", "b"], ["a", "b", "c"]]
    # unigrams: 7 tokens, {a, b, c}; bigrams: ab ba ab | ab bc -> 5, {ab, ba, bc}
    assert distinct_n(seqs, 1) == pytest.approx(3 / 7)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 5)
    assert distinct_n([torch.tensor([1, 2, 3])], 3) == 1.0
    with pytest.raises(ValueError, match="long enough"):
        distinct_n([[1, 2]], 3)


def test_unigram_entropy_by_hand():
    assert unigram_entropy([[1, 1], [2, 2]]) == pytest.approx(math.log(2))
    assert unigram_entropy([torch.tensor([5, 5, 5])]) == pytest.approx(0.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert unigram_entropy([["x", "y"], ["x", "z"]]) == pytest.approx(1.5 * math.log(2))
    with pytest.raises(ValueError, match="no tokens"):
        unigram_entropy([[]])


# ----------------------------------------------------------------------------- digits classifier

def test_digits_split_is_the_agreed_stratified_split():
    train_x, train_y = digits._digits("train")
    test_x, test_y = digits._digits("test")
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_x.dtype == np.float32 and train_x.min() == -1 and train_x.max() == 1
    assert np.bincount(test_y).min() >= 35  # stratified: every class about 36 times


def test_retrained_classifier_reaches_the_bar_and_shipped_weights_score_as_reported():
    header = digits.read_digits_classifier_header()
    retrained = digits.evaluate_accuracy(digits.train_digits_classifier(seed=0, epochs=header["training"]["epochs"]))
    shipped = digits.evaluate_accuracy(digits.load_digits_classifier())
    assert retrained >= 0.98
    assert shipped == header["test_accuracy"] >= 0.98
    assert abs(retrained - shipped) <= 0.01  # bitwise-equal weights need the same CPU kernels


def test_training_is_repeatable_under_deterministic_algorithms():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = (digits.train_digits_classifier(seed=3, epochs=1).state_dict() for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classify_and_features_accept_other_resolutions():
    images, labels = digits._digits_tensors("test")
    big = F.interpolate(images, scale_factor=4, mode="nearest")  # (N, 1, 32, 32)
    assert digits.features(images).shape == (360, 128)
    assert torch.equal(digits.classify(big), digits.classify(images))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        digits.classify(images[:, 0])


def test_digits_scores_separate_real_from_noise():
    test_x, test_y = digits._digits_tensors("test")
    train_x, train_y = digits._digits_tensors("train")
    real = digits.digits_scores(test_x, test_y)
    assert real["accuracy"] >= 0.98 and real["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert digits.digits_scores(train_x, train_y)["frechet"] == pytest.approx(digits.real_floor(), rel=1e-9)
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = digits.digits_scores(noise, test_y)
    assert bad["accuracy"] < 0.3 and bad["frechet"] > 10 * digits.real_floor()
    assert digits.digits_scores(test_x, (test_y + 1) % 10)["accuracy"] < 0.05
    with pytest.raises(ValueError, match="one label per image"):
        digits.digits_scores(test_x, test_y[:5])


def test_real_floor_grows_as_the_sample_shrinks():
    assert digits.real_floor() < digits.real_floor(360) < digits.real_floor(100)
    assert digits.real_floor(1437) == pytest.approx(digits.real_floor(), rel=1e-6)
    with pytest.raises(ValueError, match="between 2 and 1437"):
        digits.real_floor(5000)


# ----------------------------------------------------------------------------- moving digits

def _render(images, gen, frames=8, max_speed=2, canvas=32, size=16):
    """Paste each 8x8 digit, enlarged to size x size, on a black canvas and move it at a random
    integer velocity, bouncing off the walls. Returns videos (B, T, 1, canvas, canvas) and the
    top-left corners (B, T, 2)."""
    big = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    pos = torch.randint(0, canvas - size + 1, (len(images), 2), generator=gen)
    vel = torch.randint(-max_speed, max_speed + 1, (len(images), 2), generator=gen)
    videos = torch.full((len(images), frames, 1, canvas, canvas), -1.0)
    corners = torch.empty(len(images), frames, 2)
    for t in range(frames):
        corners[:, t] = pos
        for i, (r, c) in enumerate(pos.tolist()):
            videos[i, t, 0, r:r + size, c:c + size] = big[i, 0]
        bounce = (pos + vel < 0) | (pos + vel > canvas - size)
        vel = torch.where(bounce, -vel, vel)
        pos = pos + vel
    return videos, corners


@pytest.fixture(scope="module")
def clips():
    images, labels = digits._digits_tensors("test")
    videos, corners = _render(images, torch.Generator().manual_seed(0))
    return videos, corners, labels


def test_locate_digit_follows_the_pasted_digit(clips):
    videos, corners, _ = clips
    centroids = digits.locate_digit(videos)
    assert centroids.shape == corners.shape
    # The digit moves rigidly, so its centroid moves exactly as its corner does.
    torch.testing.assert_close(centroids.diff(dim=1), corners.diff(dim=1), atol=1e-4, rtol=0)
    blank = torch.full((1, 2, 1, 32, 32), -1.0)
    assert torch.equal(digits.locate_digit(blank), torch.full((1, 2, 2), 15.5))


def test_video_scores_on_real_moving_digits(clips):
    videos, _, labels = clips
    scores = digits.video_scores(videos, labels)
    assert scores["accuracy"] >= 0.95 and scores["identity_consistency"] >= 0.95
    assert digits.crop_digits(videos[:2]).shape == (2, 8, 1, 8, 8)
    # A digit whose identity flips halfway through breaks consistency for that video.
    morphed = videos.clone()
    morphed[:, 4:] = videos[torch.roll(torch.arange(len(videos)), 1), 4:]
    flipped = labels != torch.roll(labels, 1)
    assert digits.video_scores(morphed, labels)["identity_consistency"] <= 1 - 0.9 * flipped.double().mean().item()


def test_motion_distance(clips):
    videos, _, labels = clips
    moving = digits.locate_digit(videos)
    other, _ = _render(digits._digits_tensors("train")[0][:360], torch.Generator().manual_seed(1))
    static, _ = _render(digits._digits_tensors("train")[0][:360], torch.Generator().manual_seed(1), max_speed=0)
    assert digits.motion_distance(moving, moving) == 0.0
    assert digits.motion_distance(moving, digits.locate_digit(other)) < 0.15
    assert digits.motion_distance(moving, digits.locate_digit(static)) > 1.5
    # Moving right vs moving left at 1 px/frame: the same speeds, opposite column velocities
    # (distance 2 on that axis, 0 on the other, mean 1).
    right = torch.stack([torch.zeros(8), torch.arange(8.0)], dim=-1).expand(4, 8, 2)
    left = right.flip(1)
    assert digits.motion_distance(right, left) == pytest.approx(0.0, abs=1e-12)
    assert digits.motion_distance(right, left, kind="velocity") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'speed' or 'velocity'"):
        digits.motion_distance(moving, moving, kind="acceleration")
