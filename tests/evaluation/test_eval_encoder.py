"""The frozen encoder function: sharded float32 features, running BN stats."""
import jax
import jax.numpy as jnp
import numpy as np

from eval_data import random_variables
import tiny
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax.evaluation import make_encode_fn


def test_encode_fn_gives_sharded_f32_features_with_running_averages():
  model = models.build_model(tiny.tiny_config().model)
  variables = random_variables(model, image_size=8, seed=0)
  # Running averages far from any batch's statistics: features computed
  # with batch statistics would not match the reference below.
  variables["batch_stats"] = jax.tree.map(lambda v: v + 0.5,
                                          variables["batch_stats"])
  mesh = mesh_lib.make_data_mesh()
  images = jax.random.normal(jax.random.key(1), (16, 8, 8, 3))
  features = make_encode_fn(model, mesh)(
      variables, jax.device_put(images, mesh_lib.batch_sharding(mesh)))
  assert features.shape == (16, model.backbone.feature_dim)
  assert features.dtype == jnp.float32
  assert features.sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh), 2)
  expected, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images)
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
