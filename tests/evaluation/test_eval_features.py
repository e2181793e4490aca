"""Sharded features: extraction keeps rows on their device, every row once."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import child_env
import dense_reference
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import extract_features
from mio_jax.evaluation import features as features_lib


def _padded_sharded_batches(images, labels, batch_size, mesh):
  """Eval batches as the data pipeline makes them: last one padded + masked."""
  sharding = mesh_lib.batch_sharding(mesh)
  for start in range(0, len(images), batch_size):
    image = images[start:start + batch_size]
    label = labels[start:start + batch_size]
    padding = batch_size - len(image)
    yield {
        "image": jax.device_put(
            np.pad(image, ((0, padding),) + ((0, 0),) * 3), sharding),
        "label": jax.device_put(np.pad(label, (0, padding)), sharding),
        "mask": jax.device_put(
            np.arange(batch_size) < batch_size - padding, sharding),
    }


@jax.jit
def _encode(scale, images):
  return images.reshape(images.shape[0], -1)[:, :5] * scale


def _extract_37_examples(mesh):
  num_examples, batch_size = 37, 16
  images = np.arange(num_examples * 2 * 2 * 3, dtype=np.float32).reshape(
      num_examples, 2, 2, 3)
  labels = np.arange(num_examples, dtype=np.int32) % 7
  features = extract_features(
      _encode, 2.0, _padded_sharded_batches(images, labels, batch_size, mesh),
      num_batches=3)
  return features, images.reshape(num_examples, -1)[:, :5] * 2.0, labels


def test_extract_features_returns_each_example_once_in_order():
  mesh = mesh_lib.make_data_mesh()
  assert mesh.size == 8
  features, expected, labels = _extract_37_examples(mesh)
  assert features.num_examples == 37 and features.x.shape == (48, 5)
  assert features.x.dtype == np.float32
  # The features stay sharded over the devices, never gathered.
  assert features.x.sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh),
                                              2)
  order_labels, rows = features_lib.dataset_order(features)
  x, y = features_lib.take_to_host(features, rows)
  np.testing.assert_array_equal(x, expected)
  np.testing.assert_array_equal(y, labels)
  np.testing.assert_array_equal(order_labels, labels)


def test_extraction_moves_no_row_between_devices():
  """Device d's block holds exactly the rows of each batch it encoded."""
  mesh = mesh_lib.make_data_mesh()
  features, expected, _ = _extract_37_examples(mesh)
  padded = np.pad(expected, ((0, 48 - 37), (0, 0)))
  for device_index, shard in enumerate(
      sorted(features.x.addressable_shards, key=lambda s: s.index[0].start)):
    assert shard.device == mesh.devices.flat[device_index]
    # Batch b's rows [2 d, 2 d + 2) of its 16, for b = 0, 1, 2.
    encoded_here = np.concatenate(
        [padded[16 * b + 2 * device_index:16 * b + 2 * device_index + 2]
         for b in range(3)])
    np.testing.assert_array_equal(np.asarray(shard.data), encoded_here)


def test_extract_features_checks_the_number_of_batches():
  mesh = mesh_lib.make_data_mesh()
  images = np.zeros((20, 2, 2, 3), np.float32)
  labels = np.zeros(20, np.int32)
  for wrong in (1, 3):
    with pytest.raises(ValueError, match=f"expected {wrong} batches"):
      extract_features(_encode, 1.0,
                       _padded_sharded_batches(images, labels, 16, mesh),
                       num_batches=wrong)


def test_take_selects_rows_as_sharded_features():
  mesh = mesh_lib.make_data_mesh()
  x = np.arange(30, dtype=np.float32).reshape(10, 3)
  features = features_lib.from_arrays(x, np.arange(10) % 4, mesh)
  subset = features_lib.take(features, np.array([7, 2, 9]))
  assert subset.num_examples == 3 and subset.x.shape == (8, 3)
  assert subset.x.sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh), 2)
  valid = np.asarray(subset.valid)
  np.testing.assert_array_equal(np.asarray(subset.x)[valid], x[[7, 2, 9]])
  np.testing.assert_array_equal(np.asarray(subset.labels)[valid], [3, 2, 1])
  np.testing.assert_array_equal(np.asarray(subset.labels)[~valid], -1)


def test_from_arrays_rejects_mismatched_shapes():
  mesh = mesh_lib.make_data_mesh()
  with pytest.raises(ValueError, match="2-D"):
    features_lib.from_arrays(np.zeros(4), np.zeros(4), mesh)
  with pytest.raises(ValueError, match="labels must have shape"):
    features_lib.from_arrays(np.zeros((4, 2)), np.zeros(3), mesh)


# One process of a 2-process x 2-device run of extract_features: each process
# feeds only its own rows of the global batches; the features stay sharded
# (each process holds its half), every row comes back on every process, and
# kNN, the probe and few-shot run across both processes.
_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    address, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=address, num_processes=2,
                               process_id=process_id,
                               initialization_timeout=60)
    from mio_jax import mesh as mesh_lib
    from mio_jax.evaluation import extract_features
    from mio_jax.evaluation import features as features_lib
    from mio_jax.evaluation import feature_probe_classify, fewshot_probe, knn_classify
    mesh = mesh_lib.make_data_mesh()
    sharding = mesh_lib.batch_sharding(mesh)
    num_examples, batch_size = 13, 8
    images = np.arange(num_examples * 12, dtype=np.float32).reshape(
        num_examples, 2, 2, 3)
    labels = np.arange(num_examples, dtype=np.int32)
    # Process i's devices hold rows [4 i, 4 i + 4) of each global batch.
    local = slice(4 * process_id, 4 * process_id + 4)
    def batches():
      for start in range(0, num_examples, batch_size):
        padding = start + batch_size - min(start + batch_size, num_examples)
        batch = {
            "image": np.pad(images[start:start + batch_size],
                            ((0, padding), (0, 0), (0, 0), (0, 0))),
            "label": np.pad(labels[start:start + batch_size], (0, padding)),
            "mask": np.arange(batch_size) < batch_size - padding,
        }
        yield {k: jax.make_array_from_process_local_data(sharding, v[local],
                                                          v.shape)
               for k, v in batch.items()}
    encode_fn = jax.jit(
        lambda state, x: jax.numpy.cos(x.reshape(x.shape[0], -1)[:, :3] * state))
    features = extract_features(encode_fn, 1.0, batches(), num_batches=2)
    order_labels, rows = features_lib.dataset_order(features)
    x, y = features_lib.take_to_host(features, rows)
    # The protocols on features split over two processes (one full-batch
    # probe step per epoch: the result does not depend on the shuffling).
    knn = knn_classify(features, features, num_classes=13, k=3,
                       temperature=0.1)
    linear = feature_probe_classify(features, features, num_classes=13, epochs=5,
                          learning_rate=0.5, weight_decay=0.0, batch_size=13,
                          seed=0)
    # One shot of each of 13 classes: the subset is the whole set.
    fewshot = fewshot_probe(features, features, num_classes=13, shots=1,
                            trials=2, seed=0, epochs=5, learning_rate=0.5,
                            weight_decay=0.0)
    with open(out, "w") as f:
      json.dump({"features": x.tolist(), "labels": y.tolist(),
                 "order_labels": order_labels.tolist(),
                 "num_examples": features.num_examples,
                 "sharded": not features.x.is_fully_addressable,
                 "knn": knn, "linear": linear, "fewshot": fewshot,
                 "process_count": jax.process_count()}, f)
""")


def test_extract_features_on_two_processes_every_row_reaches_every_process(
    tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": child_env.xla_flags(2)}
  procs = [subprocess.Popen(
      [sys.executable, "-c", _TWO_PROCESS_SCRIPT, address, str(i),
       str(tmp_path / f"p{i}.json")],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
  expected = np.cos(np.arange(13 * 12, dtype=np.float32).reshape(13, 12)[:, :3])
  labels = np.arange(13)
  dense_knn = dense_reference.knn_classify(expected, labels, expected, labels,
                                           num_classes=13, k=3,
                                           temperature=0.1)
  dense_linear = dense_reference.feature_probe_classify(
      expected, labels, expected, labels, num_classes=13, epochs=5,
      learning_rate=0.5, weight_decay=0.0, batch_size=13, seed=0)
  for i in range(2):
    result = json.loads((tmp_path / f"p{i}.json").read_text())
    assert result["process_count"] == 2
    assert result["sharded"] and result["num_examples"] == 13
    np.testing.assert_allclose(result["features"], expected, rtol=1e-6,
                               atol=1e-6)
    assert result["knn"] == dense_knn
    assert result["linear"] == dense_linear
    assert result["fewshot"] == {"top1": dense_linear["top1"],
                                 "top1_std": 0.0}
    np.testing.assert_array_equal(result["labels"], np.arange(13))
    np.testing.assert_array_equal(result["order_labels"], np.arange(13))
