"""losses.pair_metrics: accuracies, similarities and the MI estimate on
cases with known answers, and the streamed form against the dense one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_testing import random_views
from mio_jax import losses


def test_pair_metrics_on_perfectly_separated_embeddings():
  # Views identical; images at the vertices of a centred simplex, so every
  # negative similarity is -1/(N - 1) < 0 and every positive one is 1.
  n, tau = 6, 0.5
  u = np.eye(n, dtype=np.float32) - 1.0 / n
  metrics = losses.pair_metrics(u, u, temperature=tau)
  np.testing.assert_allclose(metrics["pos_sim"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["neg_sim"], -1 / (n - 1), rtol=1e-5)
  for key in ("pos_accuracy", "neg_accuracy", "pair_accuracy"):
    assert metrics[key] == 1.0, key
  # Donsker-Varadhan: mean positive critic minus log mean exp negative critic.
  np.testing.assert_allclose(metrics["mi_estimate"],
                             1 / tau + 1 / ((n - 1) * tau), rtol=1e-5)


def test_pair_metrics_on_swapped_positives():
  # View 2 = -view 1: every positive pair is antipodal (all misclassified),
  # and the negatives of image k come as +-pairs (z_k and -z_k), so exactly
  # half of them are misclassified and their mean similarity is 0.
  u1, _ = random_views(4, 8, 32)
  metrics = losses.pair_metrics(u1, -u1, temperature=0.5,
                                negative_temperature=0.25)
  np.testing.assert_allclose(metrics["pos_sim"], -1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["neg_sim"], 0.0, atol=1e-7)
  assert metrics["pos_accuracy"] == 0.0
  assert metrics["neg_accuracy"] == 0.5
  assert metrics["pair_accuracy"] == 0.25
  # Mean positive critic -2; log mean exp of a mean-zero critic is >= 0.
  assert metrics["mi_estimate"] <= -2.0


def test_streamed_pair_metrics_equal_dense():
  u1, u2 = random_views(4, 12, 6)
  u2 = u1 + 0.7 * u2  # correlated views: accuracies away from 0 and 1
  want = losses.pair_metrics(u1, u2, temperature=0.2, negative_temperature=0.4)
  for block_size in (1, 4):
    got = losses.pair_metrics(u1, u2, temperature=0.2,
                              negative_temperature=0.4, block_size=block_size)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7,
                                 err_msg=key)


def test_pair_metrics_trace_past_two_to_the_31_negative_pairs():
  # 2N(2N - 2) negative pairs: 2,147,395,640 at N = 23,170, just under
  # 2**31; 2,147,488,280 at N = 23,171, which overflowed as an int32 count.
  for num_images, block_size in ((23_171, None), (65_536, 1024)):
    views = jax.ShapeDtypeStruct((num_images, 8), jnp.float32)
    shapes = jax.eval_shape(
        lambda u1, u2: losses.pair_metrics(u1, u2, temperature=0.1,
                                           block_size=block_size), views,
        views)
    assert all(s.shape == () and s.dtype == jnp.float32
               for s in shapes.values()), shapes


@pytest.mark.slow
def test_neg_accuracy_counts_past_two_to_the_31_negative_pairs():
  # Zero projections: every similarity is 0, so all 2,147,488,280 negative
  # pairs of N = 23,171 count as correct (s <= 0) and no positive does. An
  # int32 count wraps to a negative accuracy.
  zeros = jnp.zeros((23_171, 2), jnp.float32)
  metrics = jax.jit(lambda u: losses.pair_metrics(
      u, u, temperature=0.1, block_size=1_363))(zeros)
  np.testing.assert_allclose(metrics["neg_accuracy"], 1.0, rtol=1e-6)
  assert metrics["pos_accuracy"] == 0.0
