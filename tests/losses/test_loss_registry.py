"""The registry of mio_jax.losses: names, make_loss and the
errors each loss raises for its options."""
import numpy as np
import pytest

from loss_testing import LOSS_NAMES, call_loss, random_views
from mio_jax import errors
from mio_jax import losses


def test_registry_builds_each_loss():
  assert set(losses.LOSSES) == set(LOSS_NAMES)
  u1, u2 = random_views(2, 4, 3)
  np.testing.assert_allclose(
      call_loss("bce", u1, u2, temperature=0.3, negative_temperature=0.6,
                reg_weight=0.1),
      losses.mio_loss(u1, u2, variant="bce", temperature=0.3,
                      negative_temperature=0.6, reg_weight=0.1))
  np.testing.assert_allclose(
      call_loss("bce", u1, u2, temperature=0.3),
      losses.bce_loss(u1, u2, temperature=0.3))
  np.testing.assert_allclose(call_loss("dcl", u1, u2, temperature=0.3),
                             losses.dcl_loss(u1, u2, temperature=0.3))
  for name, entry in losses.LOSSES.items():
    np.testing.assert_allclose(call_loss(name, u1, u2, temperature=0.3),
                               entry.loss(u1, u2, temperature=0.3), err_msg=name)


_BAD_OPTIONS = [
    ("simclr", {"temperature": 0.5}, "loss",
     "loss='simclr' is not one of 'mio', 'bce', 'nt_xent', 'dcl'"),
    ("mio", {"temperature": 0.0}, "temperature",
     "temperature=0.0 must be > 0"),
    ("bce", {"temperature": 0.5, "negative_temperature": -1.0},
     "negative_temperature", "negative_temperature=-1.0 must be > 0"),
    ("mio", {"temperature": 0.5, "reg_weight": -1.0}, "reg_weight",
     "reg_weight=-1.0 must be >= 0"),
    ("nt_xent", {"temperature": 0.5, "reg_weight": 0.1}, "reg_weight",
     "reg_weight=0.1 is not an option of the contrastive losses"),
    ("dcl", {"temperature": 0.5, "negative_temperature": 0.2},
     "negative_temperature",
     "negative_temperature=0.2 is not an option of the contrastive losses"),
    ("dcl", {"temperature": 0.5, "block_size": 2.5}, "block_size",
     "block_size=2.5 must be None or a positive integer"),
]


@pytest.mark.parametrize("name,options,key,message", _BAD_OPTIONS)
def test_make_loss_errors(name, options, key, message):
  with pytest.raises(errors.InvalidValueError, match=message) as raised:
    losses.make_loss(name, **options)
  # The config validator reports the key under its config path.
  assert raised.value.key == key


def test_config_options_are_the_options_each_loss_takes():
  from mio_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.base_config()
  config.negative_temperature, config.reg_weight = 0.2, 0.1
  assert losses.config_options("nt_xent", config) == {"temperature": 0.5}
  assert losses.config_options("mio", config) == {
      "temperature": 0.5, "negative_temperature": 0.2, "reg_weight": 0.1}
  with pytest.raises(errors.InvalidValueError, match="loss='infonce'"):
    losses.config_options("infonce", config)
