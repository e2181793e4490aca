import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import optim
from mio_jax import synthetic
from mio_jax import train
from pretrain_runner import STEPS_PER_EPOCH, tiny_config


def _run_steps(config, mesh, num_steps):
  state = train.create_train_state(config, mesh,
                                   steps_per_epoch=STEPS_PER_EPOCH)
  step_fn = train.make_train_step(config, mesh,
                                  steps_per_epoch=STEPS_PER_EPOCH)
  losses = []
  for step in range(num_steps):
    state, metrics = step_fn(state,
                             synthetic.synthetic_batch(config, mesh, step))
    losses.append(float(metrics["loss"]))
  return state, np.array(losses)


def test_one_device_equals_eight_devices_with_batchnorm():
  config = tiny_config()
  state1, losses1 = _run_steps(
      config, mesh_lib.make_data_mesh(jax.devices()[:1]), 3)
  state8, losses8 = _run_steps(config, mesh_lib.make_data_mesh(), 3)
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  assert int(state1.step) == int(state8.step) == 3
  for tree1, tree8 in [(state1.params, state8.params),
                       (state1.batch_stats, state8.batch_stats)]:
    for a, b in zip(jax.tree.leaves(tree1), jax.tree.leaves(tree8)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                 atol=1e-6)
  # The parameters moved (a step that changes nothing would also "match").
  fresh = train.create_train_state(config, mesh_lib.make_data_mesh(),
                                   steps_per_epoch=STEPS_PER_EPOCH)
  kernel = lambda s: np.asarray(s.params["projector"]["dense2"]["kernel"])
  assert not np.allclose(kernel(fresh), kernel(state8))


def test_encode_fn_gives_sharded_f32_features():
  config = tiny_config()
  mesh = mesh_lib.make_data_mesh()
  state = train.create_train_state(config, mesh,
                                   steps_per_epoch=STEPS_PER_EPOCH)
  images = synthetic.synthetic_batch(config, mesh, 0)["view1"]
  features = train.make_encode_fn(config, mesh)(state, images)
  assert features.shape == (16, 16) and features.dtype == jnp.float32
  assert features.sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh), 2)


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
  tx, _ = optim.make_optimizer(config, total_steps=10, steps_per_epoch=1)
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
  tx, schedule = optim.make_optimizer(config, total_steps=10,
                                      steps_per_epoch=1)
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
  schedule = optim.learning_rate_schedule(config, total_steps=100,
                                          steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 0.3)  # half way up
  np.testing.assert_allclose(float(schedule(20)), 0.6)  # 0.3 * 512 / 256
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_unknown_optimizer_lists_valid_names():
  config = tiny_config()
  config.optimizer.name = "adam"
  with pytest.raises(ValueError, match="lars, sgd, adamw"):
    optim.make_optimizer(config, total_steps=10, steps_per_epoch=1)


def test_grad_clipping_bounds_the_update():
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_epochs = 0.0
  tx, schedule = optim.make_optimizer(config, total_steps=10,
                                      steps_per_epoch=1)
  params = {"w": jnp.zeros((4, 4))}
  updates, _ = tx.update({"w": jnp.full((4, 4), 100.0)}, tx.init(params),
                         params)
  np.testing.assert_allclose(optax.tree.norm(updates), float(schedule(0)),
                             rtol=1e-5)


def test_total_steps_override_and_check_finite_names_step():
  config = tiny_config(total_steps=-1, num_epochs=4)
  assert train.total_steps(config, 7) == 28
  config.total_steps = 5
  assert train.total_steps(config, 7) == 5
  train.check_finite(3, {"loss": 1.0, "grad_norm": 2.0})
  with pytest.raises(train.NonFiniteLossError, match="at step 12"):
    train.check_finite(12, {"loss": 1.0, "grad_norm": np.inf})


def test_chunked_loss_config_gives_the_dense_step():
  mesh = mesh_lib.make_data_mesh()
  _, dense = _run_steps(tiny_config(), mesh, 2)
  _, chunked = _run_steps(tiny_config(loss_block_size=4), mesh, 2)
  np.testing.assert_allclose(chunked, dense, rtol=1e-5)
