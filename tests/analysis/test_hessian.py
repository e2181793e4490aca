"""Hessian spectra: HVP, eigsh top eigenvalues, SLQ density, parameter subsets.

The reference is the explicit Hessian of a tiny two-layer model under the
real `mio` loss (`jax.hessian` + `numpy.linalg.eigvalsh`), in float64; the
checkpoint analysis runs end to end on resnet_tiny with synthetic batches.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mio_jax import losses
from mio_jax.analysis import spectrum
from pretrain_runner import open_checkpointer, tiny_config, tiny_run

NUM_IMAGES, INPUT_DIM, HIDDEN_DIM, OUTPUT_DIM = 6, 5, 10, 6


def _tiny_problem(dtype=jnp.float64):
  """(loss_fn, params): a tanh layer ("backbone") + linear "projector", mio loss."""
  # NumPy draws, so the float32 and float64 problems are the same one rounded.
  rng = np.random.default_rng(0)
  draw = lambda *shape, scale=1.0: jnp.asarray(
      scale * rng.standard_normal(shape), dtype)
  inputs = draw(2 * NUM_IMAGES, INPUT_DIM)
  params = {
      "backbone": {"kernel": draw(INPUT_DIM, HIDDEN_DIM),
                   "bias": draw(HIDDEN_DIM, scale=0.1)},
      "projector": {"kernel": draw(HIDDEN_DIM, OUTPUT_DIM,
                                   scale=1 / np.sqrt(HIDDEN_DIM)),
                    "bias": draw(OUTPUT_DIM, scale=0.1)},
  }
  loss = losses.make_loss("mio", temperature=0.5)

  def loss_fn(p):
    hidden = jnp.tanh(inputs @ p["backbone"]["kernel"] + p["backbone"]["bias"])
    u = hidden @ p["projector"]["kernel"] + p["projector"]["bias"]
    return loss(u[:NUM_IMAGES], u[NUM_IMAGES:])

  return loss_fn, params


def _explicit_hessian(loss_fn, params) -> np.ndarray:
  flat, unravel = ravel_pytree(params)
  # Jitted: one compile instead of one per primitive of the eager Hessian.
  return np.asarray(jax.jit(jax.hessian(lambda x: loss_fn(unravel(x))))(flat))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def explicit():
  """(Hessian, ascending eigenvalues) of the float64 tiny problem, computed once."""
  with jax.enable_x64(True):
    hessian = _explicit_hessian(*_tiny_problem())
  return hessian, np.linalg.eigvalsh(hessian)


def test_tiny_problem_is_nontrivial(explicit):
  _, eigenvalues = explicit
  # Both signs of curvature and a spread of scales, so "top k" is a real test.
  assert eigenvalues.size == 126
  assert eigenvalues.max() > 10 * abs(np.median(eigenvalues))
  assert eigenvalues.min() < 0


def test_hvp_matches_explicit_hessian_and_finite_differences(x64, explicit):
  loss_fn, params = _tiny_problem()
  flat, unravel = ravel_pytree(params)
  direction = np.random.default_rng(1).standard_normal(flat.size)
  hv = ravel_pytree(spectrum.hvp_fn(loss_fn, params)(unravel(direction)))[0]

  np.testing.assert_allclose(hv, explicit[0] @ direction,
                             rtol=1e-10, atol=1e-12)
  grad = jax.jit(jax.grad(lambda x: loss_fn(unravel(x))))
  step = 1e-5
  central = (grad(flat + step * direction) - grad(flat - step * direction)) / (2 * step)
  np.testing.assert_allclose(hv, central, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(
      spectrum.flat_hessian(loss_fn, params).matvec(direction), hv, rtol=1e-12)


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_top_eigenvalues_match_eigvalsh(x64, explicit, which):
  loss_fn, params = _tiny_problem()
  exact = explicit[1]
  k = 5
  if which == "LA":
    expected = exact[::-1][:k]
  else:
    expected = np.sort(exact[np.argsort(-np.abs(exact))[:k]])[::-1]
  found = spectrum.top_eigenvalues(spectrum.flat_hessian(loss_fn, params), k,
                                   which=which)
  np.testing.assert_allclose(found, expected, rtol=1e-6)


def test_top_eigenvalues_float32_within_noise_floor(explicit):
  expected = explicit[1][::-1][:3]
  loss_fn, params = _tiny_problem(jnp.float32)
  hessian = spectrum.flat_hessian(loss_fn, params)
  assert hessian.dtype == np.float32
  np.testing.assert_allclose(spectrum.top_eigenvalues(hessian, 3), expected,
                             rtol=1e-3)


def test_subset_hessian_is_the_diagonal_block(x64, explicit):
  loss_fn, params = _tiny_problem()
  full = explicit[0]
  marker = jax.tree.map(jnp.zeros_like, params)
  marker["projector"] = jax.tree.map(jnp.ones_like, params["projector"])
  in_projector = np.asarray(ravel_pytree(marker)[0]) == 1
  block = full[np.ix_(in_projector, in_projector)]

  sub_loss, sub_params = spectrum.restrict_to_subset(loss_fn, params,
                                                     ["projector"])
  assert list(sub_params) == ["projector"]
  np.testing.assert_allclose(_explicit_hessian(sub_loss, sub_params), block,
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(
      spectrum.top_eigenvalues(spectrum.flat_hessian(sub_loss, sub_params), 3),
      np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-6)
  assert spectrum.restrict_to_subset(loss_fn, params, None) == (loss_fn, params)


def test_full_lanczos_recovers_every_eigenvalue(x64, explicit):
  loss_fn, params = _tiny_problem()
  exact = explicit[1]
  hessian = spectrum.flat_hessian(loss_fn, params)
  nodes, weights = spectrum.slq_quadrature(hessian, num_probes=2,
                                           lanczos_steps=hessian.dim, seed=3)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-10)
  for probe_nodes, probe_weights in zip(nodes, weights):
    # With dim steps the Krylov space is everything: the Ritz values are the
    # eigenvalues (full reorthogonalisation keeps them free of ghosts).
    kept = np.sort(probe_nodes[probe_weights > 1e-14])
    assert kept.size == exact.size
    np.testing.assert_allclose(kept, exact, rtol=1e-6, atol=1e-8)


def test_slq_density_normalised_and_covers_the_spectrum(x64, explicit):
  loss_fn, params = _tiny_problem()
  exact = explicit[1]
  hessian = spectrum.flat_hessian(loss_fn, params)
  quadrature = spectrum.slq_quadrature(hessian, num_probes=3, lanczos_steps=30,
                                       seed=0)
  # Extreme Ritz values converge first: 30 steps pin both ends of the spectrum.
  np.testing.assert_allclose(quadrature.nodes.max(), exact[-1], rtol=1e-6)
  np.testing.assert_allclose(quadrature.nodes.min(), exact[0], rtol=1e-3)
  grid, density = spectrum.gaussian_density(quadrature)
  assert grid[0] < exact[0] and grid[-1] > exact[-1]
  assert np.all(density >= 0)
  np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-3)
  # First moment = Hutchinson's estimate of the mean eigenvalue tr(H)/n.
  mean_eigenvalue = np.sum(quadrature.nodes * quadrature.weights) / 3
  assert abs(mean_eigenvalue - exact.mean()) < 0.2 * np.abs(exact).max()
  same_grid, same_density = spectrum.spectral_density(
      hessian, num_probes=3, lanczos_steps=30, seed=0)
  np.testing.assert_array_equal(same_grid, grid)
  np.testing.assert_allclose(same_density, density, rtol=1e-10)


def test_bad_arguments_name_the_fix(x64):
  loss_fn, params = _tiny_problem()
  with pytest.raises(ValueError, match=r"unknown: \['head'\].*valid: \['backbone', 'projector'\]"):
    spectrum.restrict_to_subset(loss_fn, params, ["head"])
  hessian = spectrum.flat_hessian(loss_fn, params)
  with pytest.raises(ValueError, match="valid: \\['LA', 'LM', 'SA'\\]"):
    spectrum.top_eigenvalues(hessian, 2, which="BE")
  with pytest.raises(ValueError, match="k=126 must be in"):
    spectrum.top_eigenvalues(hessian, 126)


# ---- the checkpoint analysis, end to end on resnet_tiny ----------------------


def _saved_checkpoint(workdir, config, step):
  """A fresh state of config.model saved as the checkpoint of `step`."""
  from mio_jax import train
  state = train.init_state(tiny_run(config.model.name)).replace(
      step=jnp.int32(step))
  checkpointer = open_checkpointer(workdir, config)
  checkpointer.save(state)
  checkpointer.close()
  return state


def test_analyze_checkpoint_writes_json_and_png(tmp_path):
  import json

  from mio_jax import synthetic
  from mio_jax import train
  from mio_jax.analysis import hessian

  config = tiny_config()
  step = 3
  state = _saved_checkpoint(tmp_path, config, step)
  results = hessian.analyze_checkpoint(
      config, str(tmp_path), losses=("mio", "nt_xent"), top_k=2,
      params_subset="projector", data_source="synthetic",
      lanczos_steps=12, num_probes=1,
      log=lambda line: None)

  assert results["step"] == step and results["batch_size"] == config.batch_size
  assert results["num_params"] == sum(
      x.size for x in jax.tree.leaves(state.params["projector"]))
  # The analysed loss is the training loss: the train step's loss on the
  # batch of the same step at the same parameters (the config's loss is mio).
  run = tiny_run()
  _, metrics = train.make_train_step(run)(
      jax.tree.map(jnp.copy, state),
      synthetic.synthetic_batch(config, run.mesh, step))
  np.testing.assert_allclose(results["losses"]["mio"]["loss"],
                             float(metrics["loss"]), rtol=1e-5)
  for name in ("mio", "nt_xent"):
    analysis = results["losses"][name]
    top = analysis["top_eigenvalues"]
    assert len(top) == 2 and top[0] >= top[1] > 0
    # Two independent Lanczos runs (ARPACK, our SLQ) agree on lambda_max.
    np.testing.assert_allclose(np.max(analysis["quadrature"]["nodes"]), top[0],
                               rtol=2e-2)
    grid = np.asarray(analysis["density"]["grid"])
    np.testing.assert_allclose(
        np.trapezoid(analysis["density"]["values"], grid), 1.0, atol=1e-2)
  assert results["losses"]["nt_xent"]["options"] == {"temperature": 0.5}

  json_path, png_path = hessian.save_results(results, str(tmp_path / "hessian"))
  assert json.loads(open(json_path).read())["losses"]["mio"]["top_eigenvalues"] \
      == results["losses"]["mio"]["top_eigenvalues"]
  with open(png_path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_analyze_checkpoint_of_a_vit_on_its_projector(tmp_path):
  from mio_jax import synthetic
  from mio_jax import train
  from mio_jax.analysis import hessian

  config = tiny_config("vit_test")
  state = _saved_checkpoint(tmp_path, config, 2)
  results = hessian.analyze_checkpoint(
      config, str(tmp_path), losses=("mio",), top_k=1,
      params_subset="projector", data_source="synthetic", lanczos_steps=6,
      num_probes=1, log=lambda line: None)
  assert results["num_params"] == sum(
      x.size for x in jax.tree.leaves(state.params["projector"]))
  run = tiny_run("vit_test")
  _, metrics = train.make_train_step(run)(
      jax.tree.map(jnp.copy, state),
      synthetic.synthetic_batch(config, run.mesh, 2))
  np.testing.assert_allclose(results["losses"]["mio"]["loss"],
                             float(metrics["loss"]), rtol=1e-5)
  assert results["losses"]["mio"]["top_eigenvalues"][0] > 0


def test_analyze_checkpoint_rejects_bad_requests(tmp_path):
  from mio_jax.analysis import hessian
  config = tiny_config()
  with pytest.raises(hessian.AnalysisRequestError,
                     match="valid: all, projector, backbone"):
    hessian.analyze_checkpoint(config, str(tmp_path), params_subset="head")
  with pytest.raises(hessian.AnalysisRequestError, match="infonce"):
    hessian.analyze_checkpoint(config, str(tmp_path), losses=("infonce",))
  with pytest.raises(hessian.AnalysisRequestError,
                     match="batch_size=12 must be .* multiple of the 8 devices"):
    hessian.analyze_checkpoint(config, str(tmp_path), batch_size=12)
  from mio_jax import checkpointing
  with pytest.raises(checkpointing.NoCheckpointError, match="no checkpoint in"):
    hessian.analyze_checkpoint(config, str(tmp_path), data_source="synthetic")
  assert not (tmp_path / "checkpoints").exists()


_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests_dir!r})
from pretrain_runner import tiny_config

def get_config():
  # The schedule must outlast the warm-up at digits' steps per epoch.
  return tiny_config(total_steps=1000)
"""


def _run_command(tmp_path, *flags):
  import pathlib
  import subprocess
  import sys
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text(_CONFIG_FILE.format(
      tests_dir=str(pathlib.Path(__file__).parents[1])))
  return subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.hessian",
       f"--config={config_file}", f"--workdir={tmp_path}", *flags],
      capture_output=True, text=True, timeout=600, check=False)


def test_command_reports_bad_requests_in_one_line(tmp_path):
  result = _run_command(tmp_path, "--losses=mio,infonce")
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "infonce" in last
  for name in ("mio", "bce", "nt_xent", "dcl"):
    assert name in last
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_command_end_to_end(tmp_path):
  import json
  _saved_checkpoint(tmp_path, tiny_config(), step=2)
  result = _run_command(tmp_path, "--data=synthetic", "--losses=bce,dcl",
                        "--top_k=2", "--params=projector", "--batch_size=8",
                        "--lanczos_steps=8", "--num_probes=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[hessian] bce: loss" in result.stdout
  results = json.loads((tmp_path / "hessian" / "hessian.json").read_text())
  assert list(results["losses"]) == ["bce", "dcl"]
  assert results["batch_size"] == 8 and results["step"] == 2
  assert (tmp_path / "hessian" / "hessian_spectrum.png").stat().st_size > 0
