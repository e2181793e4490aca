import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mio_jax import errors
from mio_jax import models
from mio_jax import optim
from pretrain_runner import tiny_config


def _make(config, total_steps=10, steps_per_epoch=1):
  return optim.make_optimizer(config.optimizer, batch_size=config.batch_size,
                              total_steps=total_steps,
                              steps_per_epoch=steps_per_epoch)


def test_decay_mask_excludes_exactly_biases_and_norm_params():
  config = tiny_config()
  config.model.projector_last_bn = False  # so a Dense bias exists
  params = jax.eval_shape(lambda: models.build_model(config.model).init(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False))["params"]
  mask = optim.decay_mask(params)
  for path, excluded in jax.tree_util.tree_leaves_with_path(
      jax.tree.map(lambda m: not m, mask)):
    name = path[-1].key
    assert excluded == (name in ("bias", "scale")), path
  names = {path[-1].key for path, _ in
           jax.tree_util.tree_leaves_with_path(params)}
  assert names == {"kernel", "bias", "scale"}


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_optimizers_leave_biases_and_norm_params_undecayed(name):
  config = tiny_config()
  config.optimizer.name = name
  config.optimizer.weight_decay = 0.5
  config.optimizer.warmup_epochs = 0.0
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
            "bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))}}
  tx, _ = _make(config)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
  for leaf in (updates["dense"]["bias"], updates["bn"]["scale"],
               updates["bn"]["bias"]):
    assert float(jnp.abs(leaf).max()) == 0


def test_lars_trust_ratio_skips_biases_and_norm_params():
  config = tiny_config()
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.lr_scaling = "none"
  config.optimizer.base_lr = 0.1
  params = {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.ones((4,)),
            "scale": jnp.ones((4,))}
  tx, schedule = _make(config)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(schedule(0))
  np.testing.assert_allclose(updates["bias"], -lr)  # plain SGD
  np.testing.assert_allclose(updates["scale"], -lr)
  # Kernel: scaled by trust ratio eta * ||w|| / ||g|| = 0.001 * 2.
  np.testing.assert_allclose(updates["kernel"], -lr * 0.002, rtol=1e-5)


def test_learning_rate_schedule_scales_linearly_and_warms_up():
  config = tiny_config()
  config.optimizer.base_lr = 0.3
  config.batch_size = 512
  config.optimizer.warmup_epochs = 2.0
  schedule = optim.learning_rate_schedule(
      config.optimizer, batch_size=config.batch_size, total_steps=100,
      steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 0.3)  # half way up
  np.testing.assert_allclose(float(schedule(20)), 0.6)  # 0.3 * 512 / 256
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_unknown_optimizer_lists_valid_names():
  config = tiny_config()
  config.optimizer.name = "adam"
  with pytest.raises(errors.InvalidValueError, match="'lars', 'sgd', 'adamw'"):
    _make(config)


def test_grad_clipping_bounds_the_update():
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_epochs = 0.0
  tx, schedule = _make(config)
  params = {"w": jnp.zeros((4, 4))}
  updates, _ = tx.update({"w": jnp.full((4, 4), 100.0)}, tx.init(params),
                         params)
  np.testing.assert_allclose(optax.tree.norm(updates), float(schedule(0)),
                             rtol=1e-5)




def test_public_code_schedule_options():
  """Warm-up start and final lr, and a cosine horizon longer than the run."""
  config = tiny_config()
  opt = config.optimizer
  opt.base_lr, opt.lr_scaling = 1.0, "none"
  opt.warmup_epochs, opt.warmup_start_lr, opt.final_lr = 1.0, 0.1, 0.01
  opt.schedule_epochs = 40.0  # a run of 10 epochs stops at a quarter of it
  schedule = optim.learning_rate_schedule(opt, batch_size=256,
                                          total_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose(float(schedule(0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
  # Cosine from step 10 to 400: at step 100, 90 of its 390 steps are done.
  cosine = 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 90 / 390))
  np.testing.assert_allclose(float(schedule(100)), cosine, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(400)), 0.01, rtol=1e-5)


def _vit_params():
  config = tiny_config("vit_test")
  config.model.posemb = "learned"
  return config, jax.eval_shape(lambda: models.build_model(config.model).init(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False))["params"]


def test_decay_mask_of_a_vit_leaves_out_norms_biases_and_embeddings():
  _, params = _vit_params()
  decayed = sorted(jax.tree_util.keystr(path) for path, on in
                   jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))
                   if on)
  block = [f"['backbone']['block{i}']['{layer}']['kernel']" for i in (1, 2)
           for layer in ("attn']['proj", "attn']['qkv", "mlp']['fc1",
                         "mlp']['fc2")]
  assert decayed == sorted(
      block + ["['backbone']['patch_embedding']['kernel']"]
      + [f"['projector']['dense{i}']['kernel']" for i in (1, 2)])


def test_frozen_parameters_stay_put_under_weight_decay():
  config, params = _vit_params()
  config.model.freeze_patch_embedding = True
  config.optimizer.warmup_epochs = 0.0
  params = jax.tree.map(lambda p: jnp.ones(p.shape), params)
  tx, _ = optim.make_optimizer(
      config.optimizer, batch_size=config.batch_size, total_steps=10,
      steps_per_epoch=1, frozen=models.frozen_params(config.model))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  patch = updates["backbone"]["patch_embedding"]
  assert not np.any(patch["kernel"]) and not np.any(patch["bias"])
  assert np.all(updates["backbone"]["block1"]["attn"]["qkv"]["kernel"] != 0)


def test_layer_decay_scales_each_vit_layer_of_a_finetune():
  from mio_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mio_jax.supervised import task as task_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config("vit_test")
  config.finetune.layer_decay = 0.5
  config.finetune.drop_path = 0.2
  config.finetune.weight_decay = 0.0
  config.finetune.momentum = 0.0
  task = task_lib.make_task(config, mesh_lib.make_data_mesh(), "finetune",
                            num_examples=256, num_classes=3, epochs=1.0)
  assert task.backbone.drop_path == 0.2  # the fine-tuning rate, not model's
  backbone = jax.eval_shape(lambda: task.backbone.init(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False))["params"]
  params = {"backbone": jax.tree.map(lambda p: jnp.ones(p.shape), backbone),
            "head": {"kernel": jnp.ones((32, 3)), "bias": jnp.ones((3,))}}
  updates, _ = task.optimizer.update(jax.tree.map(jnp.ones_like, params),
                                     task.optimizer.init(params), params)
  lr = float(task.schedule(0))
  # Two blocks: the head and final norm at lr, block 2 at lr / 2, block 1
  # at lr / 4, the embeddings at lr / 8.
  expected = {"head": 1.0, "norm": 1.0, "block2": 0.5, "block1": 0.25,
              "patch_embedding": 0.125, "cls_token": 0.125}
  for path, update in jax.tree_util.tree_leaves_with_path(updates):
    name = path[0].key if path[0].key == "head" else path[1].key
    np.testing.assert_allclose(update, -lr * expected[name], rtol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
