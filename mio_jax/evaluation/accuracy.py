"""Top-k accuracy shared by the feature probe and kNN."""
import functools

import jax
import jax.numpy as jnp

# The paper reports top-1 and top-5; with fewer than 5 classes "top5" is
# top-num_classes (trivially 1.0), which keeps the result keys stable.
REPORTED_TOP_K = 5


def top5_k(num_classes: int) -> int:
  """The k used for the "top5" result: min(5, num_classes)."""
  return min(REPORTED_TOP_K, num_classes)


def topk_hits(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether each row's label is among its k highest scores.

  Args:
    scores: (n, num_classes) logits or class votes.
    labels: (n,) int labels.
    k: how many top classes count as a hit.

  Returns:
    (n,) bool. Ties are broken towards the lower class index (lax.top_k).
  """
  _, top_classes = jax.lax.top_k(scores, k)
  return jnp.any(top_classes == labels[:, None], axis=1)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def hit_counts(scores: jax.Array, labels: jax.Array, valid: jax.Array, *,
               num_classes: int) -> tuple[jax.Array, jax.Array]:
  """(top-1 hits, top5_k hits) over the rows with `valid` True; int32 scalars.

  Rows stay where they are (sharded scores need no gathering): only the
  two counts are reduced across devices.
  """
  hits = lambda k: jnp.sum(topk_hits(scores, labels, k) & valid)
  return hits(1), hits(top5_k(num_classes))


def fractions(counts: tuple[jax.Array, jax.Array],
              num_examples: int) -> dict[str, float]:
  """{"top1", "top5"} as fractions of `num_examples`."""
  top1, top5 = jax.device_get(counts)
  return {"top1": int(top1) / num_examples, "top5": int(top5) / num_examples}
