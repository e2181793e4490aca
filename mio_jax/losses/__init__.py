"""Pair losses on the projector outputs of two views: MIO and baselines.

The math contract is docs/loss.md. One file per loss (`mio`, `bce`,
`nt_xent`, `dcl`), each a per-anchor formula that the private pair engine
(`_pairs`) computes dense or streamed in blocks, on one device or with the
anchors split over a mesh; `pair_metrics` watches the pair classifier.

A loss is chosen by name (`config.loss`) through `make_loss`. `LOSSES` is
the one registry: each loss's plain function, its per-anchor formula and
the config keys it takes (`config_options` reads them from a config, so
the train step and the Hessian analysis build every loss alike). Each loss
module checks its own options; `make_loss` runs those checks and builds
nothing heavy (the config validator calls it to check a config).
"""
import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
from jax.sharding import Mesh

from mio_jax import errors
from mio_jax.losses import _pairs
from mio_jax.losses import bce
from mio_jax.losses import dcl
from mio_jax.losses import mio
from mio_jax.losses import nt_xent
from mio_jax.losses._pairs import check_block_size
from mio_jax.losses._pairs import normalize_rows
from mio_jax.losses.bce import bce_loss
from mio_jax.losses.bce import bce_loss_grad
from mio_jax.losses.dcl import dcl_loss
from mio_jax.losses.mio import mio_loss
from mio_jax.losses.mio import mio_loss_grad
from mio_jax.losses.mio import sharded_mio_loss
from mio_jax.losses.nt_xent import nt_xent_loss
from mio_jax.losses.pair_metrics import pair_metrics

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossEntry:
  """One loss of the registry."""
  loss: Callable[..., Array]  # (u1, u2, *, its options, block_size) -> scalar
  formula: Callable[..., _pairs.PairFormula]  # its per-anchor formula
  options: tuple[str, ...]  # the config keys (top-level) it takes


_BINARY_OPTIONS = ("temperature", "negative_temperature", "reg_weight")
_CONTRASTIVE_OPTIONS = ("temperature",)

# Name (config.loss) -> its entry.
LOSSES: Dict[str, LossEntry] = {
    "mio": LossEntry(mio_loss, mio.formula, _BINARY_OPTIONS),
    "bce": LossEntry(bce_loss, bce.formula, _BINARY_OPTIONS),
    "nt_xent": LossEntry(nt_xent_loss, nt_xent.formula, _CONTRASTIVE_OPTIONS),
    "dcl": LossEntry(dcl_loss, dcl.formula, _CONTRASTIVE_OPTIONS),
}


def config_options(name: str, config: Any) -> dict[str, Any]:
  """The options loss `name` takes, read from `config` (its top-level keys).

  Raises InvalidValueError (key "loss") for an unknown name.
  """
  errors.check_one_of("loss", name, LOSSES)
  return {key: config[key] for key in LOSSES[name].options}


def _formula(name: str, *, temperature, negative_temperature,
             reg_weight, block_size) -> _pairs.PairFormula:
  errors.check_one_of("loss", name, LOSSES)
  _pairs.check_block_size_option(block_size)
  return LOSSES[name].formula(temperature=temperature,
                              negative_temperature=negative_temperature,
                              reg_weight=reg_weight)


def make_loss(name: str, *, temperature: float,
              negative_temperature: Optional[float] = None,
              reg_weight: float = 0.0,
              block_size: Optional[int] = None,
              mesh: Optional[Mesh] = None
              ) -> Callable[[Array, Array], Array]:
  """The loss `name` (config.loss) as a function (u1, u2) -> scalar.

  Args:
    name: a key of LOSSES.
    temperature, negative_temperature, reg_weight: the loss's options
      (negative_temperature and reg_weight: mio and bce only).
    block_size: None (dense) or the images per streamed block (see
      `mio_loss`); it must divide the images per device, checked when the
      function is traced.
    mesh: None, or the training mesh (`mio_jax.mesh.make_data_mesh`). With
      several devices along its data axis, the function splits the anchors
      over them (`jax.shard_map`: each device normalises its rows,
      all-gathers the keys, computes its own anchors' losses, psum) instead
      of every device computing all N x N pairs; same value and gradients.
      Call it on (N, d) arrays, e.g. inside jit on arrays sharded over the
      data axis.

  Raises InvalidValueError with key "loss" (unknown name; the message
  lists LOSSES), "temperature" or "negative_temperature" (not > 0),
  "reg_weight" (< 0), "block_size" (not None or a positive integer), or
  "negative_temperature" / "reg_weight" given to a loss that does not take
  it (nt_xent, dcl). Whether block_size divides the images per device is
  `check_block_size`.
  """
  formula = _formula(name, temperature=temperature,
                     negative_temperature=negative_temperature,
                     reg_weight=reg_weight, block_size=block_size)
  _pairs.data_devices(mesh)  # a mesh without a data axis fails here

  def loss_fn(u1: Array, u2: Array) -> Array:
    return _pairs.pair_loss(u1, u2, formula, block_size=block_size, mesh=mesh)

  return loss_fn


__all__ = [
    "LOSSES", "LossEntry", "bce_loss", "bce_loss_grad", "check_block_size",
    "config_options", "dcl_loss", "make_loss", "mio_loss", "mio_loss_grad",
    "normalize_rows", "nt_xent_loss", "pair_metrics", "sharded_mio_loss",
]
