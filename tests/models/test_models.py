import jax
import jax.numpy as jnp
import pytest

from mio_jax import config_base
from mio_jax import models


def _model_config(name, stem, **overrides):
  c = config_base.base_config().model
  c.name, c.stem = name, stem
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.mark.parametrize("name, expected", [("resnet18", 11_176_512),
                                            ("resnet50", 23_508_032)])
def test_backbone_parameter_counts_match_torchvision(name, expected):
  # torchvision resnet18/50 without the fc layer: 11.18M / 23.51M.
  backbone = models.build_model(_model_config(name, "imagenet")).backbone
  variables = jax.eval_shape(lambda: backbone.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert count == expected


@pytest.mark.parametrize("stem, size", [("cifar", 8), ("imagenet", 16)])
def test_tiny_encoder_shapes_and_dtypes(stem, size):
  config = _model_config("resnet_tiny", stem, projector_hidden_dim=32,
                         projector_output_dim=16)
  model = models.build_model(config, dtype="bfloat16")
  images = jnp.ones((4, size, size, 3))
  # Shapes and dtypes only: eval_shape skips the (slow on CPU) compilation.
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), images, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  (features, projections), _ = jax.eval_shape(
      lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]),
      variables)
  assert features.shape == (4, models.feature_dim(config)) == (4, 32)
  assert projections.shape == (4, 16)
  assert features.dtype == projections.dtype == jnp.float32


@pytest.mark.parametrize("stem, kernel, final_side", [("cifar", 3, 8),
                                                      ("imagenet", 7, 2)])
def test_stems_downsample_as_documented(stem, kernel, final_side):
  # 16 px in; cifar: 3x3/1 stem, no pool (16 -> 16 -> stage 2: 8);
  # imagenet: 7x7/2 stem + 2x pool (16 -> 8 -> 4 -> stage 2: 2).
  backbone = models.build_model(_model_config("resnet_tiny", stem)).backbone
  _, variables = jax.eval_shape(lambda: backbone.init_with_output(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False,
      capture_intermediates=True))
  assert variables["params"]["stem_conv"]["kernel"].shape[:2] == (kernel,
                                                                  kernel)
  final = variables["intermediates"]["stage2_block1"]["__call__"][0]
  assert final.shape == (1, final_side, final_side, 32)


def test_projector_has_batchnorm_on_every_layer():
  config = _model_config("resnet_tiny", "cifar", projector_num_layers=3,
                         projector_hidden_dim=32, projector_output_dim=16)
  variables = jax.eval_shape(lambda: models.build_model(config).init(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False))
  projector = variables["params"]["projector"]
  assert sorted(projector) == ["bn1", "bn2", "bn3", "dense1", "dense2",
                               "dense3"]
  assert all("bias" not in projector[f"dense{i}"] for i in (1, 2, 3))
  config.projector_last_bn = False
  variables = jax.eval_shape(lambda: models.build_model(config).init(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False))
  assert "bn3" not in variables["params"]["projector"]
  assert "bias" in variables["params"]["projector"]["dense3"]


@pytest.mark.parametrize("key, value, message", [
    ("name", "resnet101", "resnet18"),
    ("stem", "vit", "imagenet"),
])
def test_unknown_names_list_valid_ones(key, value, message):
  with pytest.raises(ValueError, match=message):
    config = _model_config("resnet18", "cifar")
    config[key] = value
    models.build_model(config)
  with pytest.raises(ValueError, match="float32"):
    models.build_model(_model_config("resnet18", "cifar"), dtype="float16")
