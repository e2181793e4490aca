"""config.dataset.pretrain_split: the public code's 80 % of the training split."""
import pytest

import mio_jax.data as data
from mio_jax import config_base
from mio_jax import errors
from mio_jax.data import dataset


def _digits(tmp_path, split=None):
  config = config_base.base_config()
  config.dataset.data_dir = str(tmp_path)
  config.dataset.pretrain_split = split
  config.batch_size = 100
  return config


def test_a_sliced_pretrain_split_sets_the_sizes(tmp_path):
  data.ensure_prepared(_digits(tmp_path))
  assert data.dataset_info(_digits(tmp_path)).num_pretrain_examples == 1500
  sliced = _digits(tmp_path, "train[:80%]")
  assert data.dataset_info(sliced).num_pretrain_examples == 1200
  assert data.pretrain_steps_per_epoch(sliced) == 12
  assert dataset.dataset_spec(sliced).pretrain_split == "train[:80%]"
  # Evaluation still uses the whole splits.
  assert data.dataset_info(sliced).num_eval_examples == {"train": 1500,
                                                         "test": 297}


def test_an_unknown_split_names_the_key(tmp_path):
  with pytest.raises(errors.InvalidValueError,
                     match="pretrain_split='validation'.*digits"):
    data.dataset_info(_digits(tmp_path, "validation"))
