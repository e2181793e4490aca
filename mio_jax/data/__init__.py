"""Input pipelines of mio_jax: datasets, two-view augmentation, eval passes.

  dataset_info(config) -> DatasetInfo
  pretrain_batches(config, mesh, *, start_step=0) -> Iterator[dict]
  pretrain_steps_per_epoch(config) -> int
  eval_batches(config, mesh, split) -> Iterator[dict]
  split_passes(config, mesh, tfds_split) -> () -> Iterator[dict]  # passes
  ensure_prepared(config)  # raises DatasetNotPreparedError with the fix
  prepare_digits(data_dir=None), prepare_dataset(name, data_dir, manual_dir)

The names above load their module on first use: importing the package, or
a module that needs no TensorFlow (`indexing`, `augment_recipe`,
`device_augment`), loads no TensorFlow. The modules that use it import it
from `mio_jax.host_tf`, which keeps it off the accelerators.
"""
import importlib

# Name -> the module of mio_jax.data that defines it.
_EXPORTS = {
    "DatasetInfo": "dataset",
    "check_config": "dataset",
    "dataset_info": "dataset",
    "dataset_spec": "dataset",
    "prepared_identity": "dataset",
    "eval_batches": "pipeline",
    "pretrain_batches": "pipeline",
    "pretrain_steps_per_epoch": "pipeline",
    "split_passes": "pipeline",
    "DatasetNotPreparedError": "preparation",
    "ensure_prepared": "preparation",
    "prepare_dataset": "preparation",
    "prepare_digits": "preparation",
    "DATASET_NAMES": "registry",
    "DATASETS": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"),
                 name)


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
