import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import run as run_lib
from mio_jax import synthetic
from mio_jax import train
from pretrain_runner import build_tiny_run, tiny_config, tiny_run


def _run_steps(config, mesh, num_steps):
  run = build_tiny_run(config, mesh)
  state = train.init_state(run)
  step_fn = train.make_train_step(run)
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
  fresh = train.init_state(tiny_run())
  kernel = lambda s: np.asarray(s.params["projector"]["dense2"]["kernel"])
  assert not np.allclose(kernel(fresh), kernel(state8))


def test_total_steps_override_and_check_finite_names_step():
  config = tiny_config(total_steps=None, num_epochs=4)
  assert run_lib.total_steps(config, 7) == 28
  config.total_steps = 5
  assert run_lib.total_steps(config, 7) == 5
  loop.check_finite(3, {"loss": 1.0, "grad_norm": 2.0, "params_finite": 1.0})
  with pytest.raises(loop.NonFiniteLossError, match="at step 12"):
    loop.check_finite(12, {"loss": 1.0, "grad_norm": np.inf})
  # Finite loss and gradient, but the update left a NaN in the parameters.
  with pytest.raises(loop.NonFiniteLossError, match="at step 4.*NOT finite"):
    loop.check_finite(4, {"loss": 1.0, "grad_norm": 2.0,
                           "params_finite": 0.0})


def test_step_reports_non_finite_updated_parameters():
  run = tiny_run()
  step_fn = train.make_train_step(run)
  batch = lambda: synthetic.synthetic_batch(run.config, run.mesh, 0)
  _, metrics = step_fn(train.init_state(run), batch())
  assert float(metrics["params_finite"]) == 1.0
  # An infinite momentum: loss and gradient finite, the update not. (The
  # same compiled step: an infinite learning rate would compile another.)
  state = train.init_state(run)
  infinite = lambda x: (jnp.full_like(x, jnp.inf)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x)
  _, metrics = step_fn(
      state.replace(opt_state=jax.tree.map(infinite, state.opt_state)),
      batch())
  assert np.isfinite(float(metrics["loss"]))
  assert np.isfinite(float(metrics["grad_norm"]))
  assert float(metrics["params_finite"]) == 0.0


@pytest.mark.parametrize("model", ["resnet_tiny", "vit_test"])
def test_chunked_loss_config_gives_the_dense_step(model):
  mesh = mesh_lib.make_data_mesh()
  _, dense = _run_steps(tiny_config(model), mesh, 2)
  _, chunked = _run_steps(tiny_config(model, loss_block_size=2), mesh, 2)
  np.testing.assert_allclose(chunked, dense, rtol=1e-5)


def test_one_device_equals_eight_devices_with_a_vit():
  config = tiny_config("vit_test")
  _, losses1 = _run_steps(config, mesh_lib.make_data_mesh(jax.devices()[:1]),
                          3)
  state8, losses8 = _run_steps(config, mesh_lib.make_data_mesh(), 3)
  # The losses of steps 2 and 3 see the updates. (Parameters are not
  # compared: AdamW turns gradients near zero, whose last bits differ
  # with the reduction order, into updates of up to +-lr.)
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  # The ViT moved (a step that changes nothing would also "match").
  qkv = lambda s: np.asarray(s.params["backbone"]["block1"]["attn"]["qkv"][
      "kernel"])
  assert not np.allclose(qkv(train.init_state(tiny_run("vit_test"))),
                         qkv(state8))


def test_online_probe_learns_without_touching_the_encoder():
  mesh = mesh_lib.make_data_mesh()
  config = tiny_config()
  runs = {
      "without": run_lib.build_run(config, mesh, steps_per_epoch=3),
      "with": run_lib.build_run(config, mesh, steps_per_epoch=3,
                                num_classes=synthetic.NUM_CLASSES),
  }
  states, metrics = {}, {}
  for name, run in runs.items():
    state, step_fn = train.init_state(run), train.make_train_step(run)
    for step in range(3):
      batch = synthetic.synthetic_batch(config, mesh, step)
      if step == 1:  # rows without a label (STL-10's unlabelled split)
        batch["label"] = batch["label"].at[:8].set(-1)
      state, metrics[name] = step_fn(state, batch)
    states[name] = state
  assert states["without"].probe is None
  assert "online_probe_top1" not in metrics["without"]
  assert 0.0 <= float(metrics["with"]["online_probe_top1"]) <= 1.0
  assert np.isfinite(float(metrics["with"]["online_probe_loss"]))
  # The probe trained ...
  assert float(jnp.abs(states["with"].probe["params"]["kernel"]).max()) > 0
  # ... and the encoder and optimizer are exactly those of a run without it.
  for a, b in zip(jax.tree.leaves((states["with"].params,
                                   states["with"].batch_stats,
                                   states["with"].opt_state)),
                  jax.tree.leaves((states["without"].params,
                                   states["without"].batch_stats,
                                   states["without"].opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_per_view_batch_norm_differs_from_joint_and_updates_twice():
  mesh = mesh_lib.make_data_mesh()
  joint = build_tiny_run(tiny_config(), mesh)
  per_view = build_tiny_run(tiny_config(bn_views="per_view"), mesh)
  batch = synthetic.synthetic_batch(joint.config, mesh, 0)
  state = train.init_state(joint)
  outputs = {}
  for name, run in (("joint", joint), ("per_view", per_view)):
    # Jitted: one compile per objective (op by op, each of its hundreds of
    # primitives compiles for 8 devices on its own).
    outputs[name] = jax.jit(functools.partial(
        train.training_objective, run.model, loss_fn=run.loss_fn,
        bn_views=run.config.bn_views))(state.params, state.batch_stats, batch)
  assert not np.isclose(float(outputs["joint"][0]),
                        float(outputs["per_view"][0]))
  # Per view: view 1 alone gives the same projections as a pass of view 1.
  (_, u1_alone), _ = jax.jit(functools.partial(
      per_view.model.apply, train=True, mutable=["batch_stats"]))(
          state.variables, batch["view1"])
  np.testing.assert_allclose(np.asarray(outputs["per_view"][1][1]),
                             np.asarray(u1_alone), rtol=1e-5, atol=1e-6)
