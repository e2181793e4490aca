import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mio_jax import config_base
from mio_jax import errors
from mio_jax import models
from mio_jax.models import vit


def _vit_config(name="vit_test", **overrides):
  c = config_base.base_config().model
  c.name = name
  c.projector_hidden_dim, c.projector_output_dim = 32, 16
  for key, value in overrides.items():
    c[key] = value
  return c


def _param_count(tree):
  return sum(p.size for p in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, expected", [("vit_small", 21_665_664),
                                            ("vit_base", 85_798_656)])
def test_backbone_parameter_counts_match_timm(name, expected):
  # timm's vit_{small,base}_patch16_224 less the 1000-class head: 22,050,664
  # - 385,000 and 86,567,656 - 769,000 (learned position embedding over the
  # class token and 196 patches, as timm's).
  backbone = models.build_model(_vit_config(name, posemb="learned")).backbone
  variables = jax.eval_shape(lambda: backbone.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert _param_count(variables["params"]) == expected
  assert "batch_stats" not in variables


def test_fixed_position_embedding_is_no_parameter():
  learned = _vit_config("vit_small", posemb="learned")
  fixed = _vit_config("vit_small", posemb="sincos2d")
  counts = [_param_count(jax.eval_shape(lambda c=c: models.build_model(
      c).backbone.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                       train=False))) for c in (learned, fixed)]
  assert counts[0] - counts[1] == 197 * 384


@pytest.mark.parametrize("name, size, patch, pool", [
    ("vit_tiny", 32, 4, "token"), ("vit_small", 96, 8, "gap"),
    ("vit_base", 224, 16, "token")])
def test_encoder_shapes_and_dtypes(name, size, patch, pool):
  config = _vit_config(name, patch_size=patch, pool=pool)
  model = models.build_model(config, dtype="bfloat16")
  images = jnp.ones((2, size, size, 3))
  # Shapes and dtypes only: eval_shape skips the compilation.
  variables = jax.eval_shape(lambda: models.init_variables(
      model, jax.random.key(0), image_size=size))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert variables["batch_stats"]["backbone"] == {}
  (features, projections), _ = jax.eval_shape(
      lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]),
      variables)
  width = vit.VARIANTS[name].width
  assert features.shape == (2, models.feature_dim(config)) == (2, width)
  assert projections.shape == (2, 16)
  assert features.dtype == projections.dtype == jnp.float32


def test_bfloat16_close_to_float32():
  config = _vit_config(patch_size=4)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = models.init_variables(models.build_model(config),
                                    jax.random.key(0), image_size=16)
  f32, b16 = [models.build_model(config, dtype=dtype).apply(
      variables, images, train=False)[0] for dtype in ("float32", "bfloat16")]
  assert not np.array_equal(f32, b16)  # it did compute in bfloat16
  np.testing.assert_allclose(b16, f32, atol=0.06, rtol=0.05)


def test_sincos_embedding_matches_moco_v3_layout():
  emb = vit.sincos_posemb_2d(3, 8)
  assert emb.shape == (9, 8)
  # Token 5 is row 1, column 2; channels: sin(col), cos(col), sin(row),
  # cos(row) at frequencies 1 and 1/100.
  omega = np.array([1.0, 0.01])
  np.testing.assert_allclose(emb[5], np.concatenate([
      np.sin(2 * omega), np.cos(2 * omega), np.sin(omega), np.cos(omega)]),
                             rtol=1e-6)


@pytest.mark.parametrize("remat_blocks", [1, 2, 5])
def test_remat_keeps_values_and_gradients(remat_blocks):
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  plain = models.build_model(_vit_config(patch_size=4)).backbone
  remat = models.build_model(
      _vit_config(patch_size=4, remat_blocks=remat_blocks)).backbone
  params = plain.init(jax.random.key(0), images, train=False)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(
      remat.init(jax.random.key(0), images, train=False)["params"])
  grads = [jax.grad(lambda p, m=m: jnp.sum(m.apply(
      {"params": p}, images, train=True) ** 2))(params) for m in (plain, remat)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat_blocks,recomputed", [(0, 0), (1, 1), (2, 2),
                                                     (5, 2)])
def test_remat_blocks_recomputes_that_many_blocks(remat_blocks, recomputed):
  images = jnp.zeros((2, 8, 8, 3))
  model = models.build_model(
      _vit_config(patch_size=4, remat_blocks=remat_blocks)).backbone
  variables = model.init(jax.random.key(0), images, train=False)
  jaxpr = jax.make_jaxpr(
      lambda v: model.apply(v, images, train=True))(variables).jaxpr
  # A recomputed block is a remat of matmuls (GELU's own remat has none).
  blocks = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "remat2" and
            any(inner.primitive.name == "dot_general"
                for inner in eqn.params["jaxpr"].eqns)]
  assert len(blocks) == recomputed


def test_exact_gelu_matches_jax_erfc_form():
  x = jnp.linspace(-10.0, 10.0, 20001)
  np.testing.assert_allclose(vit.exact_gelu(x),
                             jax.nn.gelu(x, approximate=False), atol=1e-6)
  np.testing.assert_allclose(
      jax.vmap(jax.grad(vit.exact_gelu))(x),
      jax.vmap(jax.grad(lambda y: jax.nn.gelu(y, approximate=False)))(x),
      atol=1e-6)


def test_negative_remat_blocks_is_refused():
  with pytest.raises(errors.InvalidValueError, match="remat_blocks"):
    models.build_model(_vit_config(remat_blocks=-1))


def test_drop_path_drops_whole_examples_in_training_only():
  block = vit.Encoder1DBlock(num_heads=2, mlp_dim=16, drop_path=0.5)
  x = jax.random.normal(jax.random.key(1), (64, 5, 8))
  variables = block.init(jax.random.key(0), x, False)
  out = block.apply(variables, x, True, rngs={"dropout": jax.random.key(2)})
  unchanged = np.asarray(out == x)
  # An example whose two branches were both dropped comes out unchanged, in
  # every token and channel; every other example changes everywhere.
  assert np.any(np.all(unchanged, axis=(1, 2)))
  np.testing.assert_array_equal(np.all(unchanged, axis=(1, 2)),
                                np.any(unchanged, axis=(1, 2)))
  evaluated = block.apply(variables, x, False)
  np.testing.assert_array_equal(
      evaluated, vit.Encoder1DBlock(num_heads=2, mlp_dim=16).apply(
          variables, x, True))


def test_frozen_patch_embedding_gets_no_gradient():
  config = _vit_config(patch_size=4, freeze_patch_embedding=True)
  model = models.build_model(config)
  variables = models.init_variables(model, jax.random.key(0), image_size=8)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  grads = jax.grad(lambda p: jnp.sum(model.apply(
      {**variables, "params": p}, images, train=False)[1]))(
          variables["params"])
  frozen = models.frozen_params(config)(grads)
  assert sorted(jax.tree_util.keystr(path) for path, leaf in
                jax.tree_util.tree_leaves_with_path(frozen) if leaf) == [
                    "['backbone']['patch_embedding']['bias']",
                    "['backbone']['patch_embedding']['kernel']"]
  assert not np.any(grads["backbone"]["patch_embedding"]["kernel"])
  assert np.any(grads["backbone"]["block1"]["attn"]["qkv"]["kernel"])
  assert models.frozen_params(_vit_config(patch_size=4)) is None


def test_image_size_not_divisible_by_patch_size_names_both():
  model = models.build_model(_vit_config(patch_size=5))
  with pytest.raises(errors.InvalidValueError,
                     match=r"patch_size=5 does not divide the image size 16; "
                     r"use a patch size that divides dataset.image_size "
                     r"\(e.g. patch_size=4\)"):
    jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                 image_size=16))


@pytest.mark.parametrize("key, value, message", [
    ("name", "vit_huge", "vit_small"),
    ("posemb", "rope", "sincos2d"),
    ("pool", "map", "token"),
    ("drop_path", 1.0, r"\[0, 1\)"),
    ("patch_size", 0, "> 0"),
])
def test_bad_vit_settings_name_the_key(key, value, message):
  config = _vit_config()
  config[key] = value
  with pytest.raises(errors.InvalidValueError, match=message):
    models.build_model(config)


def test_attention_equals_jax_attention_in_values_and_gradients():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 8))
  weights = jax.random.normal(jax.random.key(1), (2, 5, 2, 8))
  ours, theirs = [
      jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(jnp.sin(f(q, k, v))
                                                      * weights),
                         argnums=(0, 1, 2))(q, k, v)
      for f in (vit.attention, jax.nn.dot_product_attention)]
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
