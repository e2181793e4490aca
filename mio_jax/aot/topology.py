"""Cloud TPU accelerator types as libtpu's compile-only devices.

A TPU slice is named as `gcloud` and `launch/tpu_create.sh` spell it
(`v4-8`, `v5litepod-16`, `v5p-8`, `v6e-8`); libtpu describes the same
slice by a topology name, a chip configuration and how many chips each
host holds. `parse` maps the first to the second, `compile_only_devices`
asks libtpu for the devices, so that `jax.jit(...).lower(...).compile()`
produces the program the real slice would run, on a machine without a TPU.

Host layout. libtpu's default puts 4 chips on a host (2x2x1). That is right
for v4 and v5p (4 chips per VM) and for multi-host v5e/v6e slices (their
VMs hold 4 chips each: the v6e page's table, "Hosts" and "VMs" columns;
for v5e the same 4-chip VM type, ct5lp-hightpu-4t), but a v5litepod-8 or
v6e-8 is ONE VM with 8 chips, which the default would compile as 2
processes of 4. So every slice here names its chips per host.

libtpu is found beside the venv's packages, in `<venv>/libtpu` (`make
libtpu` puts it there, so that nothing else in the venv sees it: JAX tries
a TPU backend at start-up whenever libtpu is importable), or as an
importable `libtpu` package (`pip install "jax[tpu]"`).
"""
import dataclasses
import importlib.util
import math
import os
import pathlib
import sys
from typing import Optional, Sequence

import jax

from mio_jax import chips
from mio_jax import errors

# The pin, also in requirements-libtpu.txt (a test checks they agree): the
# libtpu that jax[tpu]==0.10.2 installs.
LIBTPU_REQUIREMENT = "libtpu==0.0.42.1"
LIBTPU_DIR = "libtpu"  # under the venv (sys.prefix)
INSTALL_COMMAND = (f"make libtpu (or: .venv/bin/pip install --no-deps "
                   f"--upgrade --target .venv/{LIBTPU_DIR} {LIBTPU_REQUIREMENT})")


class UnknownTopologyError(errors.UserError, ValueError):
  """An accelerator type this table does not know."""


class LibtpuMissingError(errors.UserError, RuntimeError):
  """libtpu is not installed, so no TPU program can be compiled."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """One Cloud TPU slice, as gcloud names it and as libtpu builds it."""
  accelerator_type: str  # gcloud's name, e.g. "v4-8"
  chip: chips.Chip
  topology: str  # libtpu's, e.g. "v4:2x2x1"
  chips_per_host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]  # torus links per dimension

  @property
  def chip_config(self) -> str:
    """libtpu's chip config: "megacore" makes the two TensorCores of a v4 or
    v5p chip one device, as JAX runs them."""
    return "megacore" if self.chip.cores_per_chip == 2 else "default"

  @property
  def chips(self) -> int:
    return math.prod(_dims(self.topology.split(":")[1]))

  @property
  def chips_per_host(self) -> int:
    x, y, z = self.chips_per_host_bounds
    return x * y * z

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host


def _dims(shape: str) -> tuple[int, ...]:
  return tuple(int(d) for d in shape.split("x"))


def _slices() -> dict[str, TpuSlice]:
  """Every accelerator type of the table, by gcloud's name."""
  table = {}
  # v4 and v5p: named by TensorCores (2 per chip), 3-D, 4 chips per host;
  # every dimension a multiple of 4 makes a torus (Cloud TPU v4 docs).
  for prefix, chip, libtpu_name in (("v4", "TPU v4", "v4"),
                                     ("v5p", "TPU v5p", "v5p")):
    for shape in ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8",
                  "4x8x8", "8x8x8"):
      dims = _dims(shape)
      cores = 2 * dims[0] * dims[1] * dims[2]
      torus = all(d % 4 == 0 for d in dims)
      table[f"{prefix}-{cores}"] = TpuSlice(
          f"{prefix}-{cores}", chips.by_name(chip), f"{libtpu_name}:{shape}",
          (2, 2, 1), (torus,) * 3)
  # v5e (gcloud: v5litepod) and v6e: named by chips, 2-D. Up to 8 chips
  # one VM holds them all; larger slices are VMs of 4 chips (see above).
  # Only the full 256-chip pod is a torus.
  for prefix, chip, libtpu_name in (("v5litepod", "TPU v5e", "v5e"),
                                     ("v6e", "TPU v6e", "v6e")):
    for shape, bounds in (("1x1", (1, 1, 1)), ("2x2", (2, 2, 1)),
                          ("2x4", (2, 4, 1)), ("4x4", (2, 2, 1)),
                          ("4x8", (2, 2, 1)), ("8x8", (2, 2, 1)),
                          ("8x16", (2, 2, 1)), ("16x16", (2, 2, 1))):
      x, y = _dims(shape)
      table[f"{prefix}-{x * y}"] = TpuSlice(
          f"{prefix}-{x * y}", chips.by_name(chip), f"{libtpu_name}:{shape}",
          bounds, (shape == "16x16", shape == "16x16", False))
  return table


SLICES: dict[str, TpuSlice] = _slices()


def parse(accelerator_type: str) -> TpuSlice:
  """The slice `accelerator_type` names (gcloud's spelling, e.g. "v4-8").

  Raises UnknownTopologyError listing the known ones.
  """
  name = accelerator_type.strip().lower()
  if name in SLICES:
    return SLICES[name]
  hint = ""
  if name.startswith("v5e-") and f"v5litepod-{name[4:]}" in SLICES:
    hint = f" (gcloud calls v5e v5litepod: --topology=v5litepod-{name[4:]})"
  raise UnknownTopologyError(
      f"--topology={accelerator_type!r} is not a known Cloud TPU accelerator "
      f"type{hint}; known: {', '.join(SLICES)}")


# ---- libtpu ----------------------------------------------------------------


def libtpu_path(prefix: Optional[str] = None) -> Optional[str]:
  """libtpu.so from `make libtpu` (<prefix>/libtpu) or an importable libtpu.

  prefix: the venv (default sys.prefix). None when neither is there.
  """
  beside = pathlib.Path(prefix or sys.prefix) / LIBTPU_DIR / "libtpu" / "libtpu.so"
  if beside.is_file():
    return str(beside)
  spec = importlib.util.find_spec("libtpu")
  if spec is not None and spec.origin:
    installed = pathlib.Path(spec.origin).parent / "libtpu.so"
    if installed.is_file():
      return str(installed)
  return None


def require_libtpu(prefix: Optional[str] = None) -> str:
  """libtpu_path(), or LibtpuMissingError with the install command."""
  path = libtpu_path(prefix)
  if path is None:
    raise LibtpuMissingError(
        "compiling for a TPU needs libtpu, which is not installed; install "
        f"it with: {INSTALL_COMMAND}")
  return path


def compile_only_devices(tpu_slice: TpuSlice, *,
                         libtpu: Optional[str] = None) -> Sequence[jax.Device]:
  """libtpu's compile-only devices of `tpu_slice`: one per chip.

  Their `process_index` gives the host of each chip. Programs compiled
  for them cannot run here. libtpu: its path (default: `require_libtpu()`);
  JAX takes it from TPU_LIBRARY_PATH, its only hook for a library outside
  the packages, which is therefore set here. Run with JAX_PLATFORMS=cpu (or
  jax.config jax_platforms="cpu") so that JAX does not also start a TPU
  backend from it.
  """
  path = libtpu or require_libtpu()
  os.environ["TPU_LIBRARY_PATH"] = path
  # libtpu reads these when it loads; without them it prints three lines
  # of warnings about a TPU VM it cannot find. They name the slice compiled.
  os.environ["TPU_ACCELERATOR_TYPE"] = tpu_slice.accelerator_type
  os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
  # libtpu takes /tmp/libtpu_lockfile so that one process owns the chips;
  # a second compile on the same machine would then stop with "ABORTED:
  # Internal error when accessing libtpu multi-process lockfile". Compiling
  # touches no chip, so several may load it.
  os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  # Imported here: importing it is harmless, but only this needs it.
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  description = topologies.get_topology_desc(
      topology_name=tpu_slice.topology, platform="tpu",
      chip_config_name=tpu_slice.chip_config,
      chips_per_host_bounds=tpu_slice.chips_per_host_bounds,
      wrap=tpu_slice.wrap)
  return list(description.devices)
