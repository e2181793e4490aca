"""The two-view augmentation's settings and colour recipe, without TensorFlow.

The colour stage of a view is written once, here: which ops run, in which
order, with which probability, which of the view's sub-keys drives each
and which settings of `AugmentParams` it takes. Two implementations follow
it: the host's tf ops (`augment.host_colour`) and the accelerator's jax ops
(`device_augment.augment_view`); each only names its function for each op
(`apply_colour_stage` takes that table). Neither TensorFlow nor JAX is
imported here, so the device side loads no TensorFlow.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

# Kernel side of the Gaussian blur as a fraction of the image side (SimCLR).
_BLUR_KERNEL_FRACTION = 0.1
BLUR_SIGMA_RANGE = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5
# tf.image.rgb_to_grayscale's luma weights (ITU-R BT.601).
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)

# The sub-keys of one view, in the order both pipelines split the view's
# key: crop and flip are the host's geometry, the rest the colour stage's
# (an op's "apply" key decides whether it runs, its own key draws its
# parameters). The device splits the same list, so an op reads the same
# slot on both sides.
VIEW_SUBKEYS = ("crop", "flip", "jitter_apply", "jitter", "grayscale_apply",
                "blur_apply", "blur", "solarize_apply", "affine", "noise")
NUM_VIEW_SUBKEYS = len(VIEW_SUBKEYS)

# The colour jitter's ops in their fixed order (torchvision's ColorJitter).
# The jitter key splits into one sub-key per op, in this order, and one
# more (the last) that draws the random order.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
JITTER_ORDER_SUBKEY = len(JITTER_OPS)
NUM_JITTER_SUBKEYS = len(JITTER_OPS) + 1


def subkey(name: str) -> int:
  """The index of sub-key `name` among a view's `VIEW_SUBKEYS`."""
  return VIEW_SUBKEYS.index(name)


def blur_radius(height: int, width: int) -> int:
  """Half-width of the blur kernel: about 10% of the longer side (SimCLR)."""
  return max(1, int(max(height, width) * _BLUR_KERNEL_FRACTION) // 2)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """The augmentation settings of one run (from `config.augment`)."""
  image_size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: bool = True
  color_jitter_strength: float = 0.5
  color_jitter_prob: float = 0.8
  color_jitter_random_order: bool = True
  grayscale_prob: float = 0.2
  blur_prob: float = 0.0
  solarize_prob: float = 0.0
  rotation_degrees: float = 0.0
  translate_pixels: int = 0
  gaussian_noise_std: float = 0.0
  on_device: bool = False  # colour ops in device_augment, not on the host

  def __post_init__(self):
    """Rejects settings the ops cannot honour, naming the config key."""
    problems = []
    for name in ("color_jitter_prob", "grayscale_prob", "blur_prob",
                 "solarize_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        problems.append(f"augment.{name}={getattr(self, name)} must be in "
                        "[0, 1]")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      problems.append(f"augment.crop_scale={self.crop_scale} must satisfy "
                      "0 < min <= max <= 1")
    lo, hi = self.crop_ratio
    if not 0.0 < lo <= hi:
      problems.append(f"augment.crop_ratio={self.crop_ratio} must satisfy "
                      "0 < min <= max")
    if not 0.0 <= self.color_jitter_strength <= 1.25:
      # 0.8s must stay <= 1 for the contrast/saturation lower bounds.
      problems.append(f"augment.color_jitter_strength="
                      f"{self.color_jitter_strength} must be in [0, 1.25]")
    for name in ("rotation_degrees", "translate_pixels", "gaussian_noise_std"):
      if getattr(self, name) < 0:
        problems.append(f"augment.{name}={getattr(self, name)} must be >= 0")
    if self.on_device and (self.rotation_degrees or self.translate_pixels):
      problems.append(
          "augment.on_device=True runs only the colour ops on the device, "
          f"not rotation_degrees={self.rotation_degrees} / translate_pixels="
          f"{self.translate_pixels}: set both to 0 or augment.on_device=False")
    if self.image_size <= 0:
      problems.append(f"dataset.image_size={self.image_size} must be > 0")
    if problems:
      raise ValueError("Bad augmentation config: " + "; ".join(problems))

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "AugmentParams":
    a = config.augment
    return cls(
        image_size=int(config.dataset.image_size),
        crop_scale=tuple(float(x) for x in a.crop_scale),
        crop_ratio=tuple(float(x) for x in a.crop_ratio),
        hflip=bool(a.hflip),
        color_jitter_strength=float(a.color_jitter_strength),
        color_jitter_prob=float(a.color_jitter_prob),
        color_jitter_random_order=bool(a.color_jitter_random_order),
        grayscale_prob=float(a.grayscale_prob),
        blur_prob=float(a.blur_prob),
        solarize_prob=float(a.solarize_prob),
        rotation_degrees=float(a.rotation_degrees),
        translate_pixels=int(a.translate_pixels),
        gaussian_noise_std=float(a.gaussian_noise_std),
        on_device=bool(a.on_device),
    )


@dataclasses.dataclass(frozen=True)
class ColourOp:
  """One op of the colour stage.

  name: the op an implementation table maps to its function.
  prob: the probability that it runs (1.0: always).
  apply_key: the name of the sub-key that decides whether it runs (None
    when it always runs).
  key: the name of the sub-key of its own draws (None: deterministic).
  settings: the keyword arguments an implementation's function takes, from
    `AugmentParams`.
  """
  name: str
  prob: float
  apply_key: Optional[str]
  key: Optional[str]
  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def colour_stage(params: AugmentParams) -> tuple[ColourOp, ...]:
  """The colour ops of one view, in the order they run.

  Colour jitter (p), grayscale (p), Gaussian blur (p), solarise (p), then
  the small-image extras: rotation/translation (host only; `AugmentParams`
  refuses them with `on_device`) and Gaussian noise. Ops that cannot run
  (probability or strength 0) are left out.
  """
  candidates = (
      (params.color_jitter_strength > 0,
       ColourOp("color_jitter", params.color_jitter_prob, "jitter_apply",
                "jitter", {
                    "strength": params.color_jitter_strength,
                    "random_order": params.color_jitter_random_order})),
      (True, ColourOp("grayscale", params.grayscale_prob, "grayscale_apply",
                      None)),
      (True, ColourOp("blur", params.blur_prob, "blur_apply", "blur")),
      (True, ColourOp("solarize", params.solarize_prob, "solarize_apply",
                      None)),
      (params.rotation_degrees > 0 or params.translate_pixels > 0,
       ColourOp("affine", 1.0, None, "affine", {
           "max_degrees": params.rotation_degrees,
           "max_translate": params.translate_pixels})),
      (params.gaussian_noise_std > 0,
       ColourOp("noise", 1.0, None, "noise",
                {"std": params.gaussian_noise_std})),
  )
  return tuple(op for wanted, op in candidates if wanted and op.prob > 0)


def jitter_ranges(strength: float) -> dict[str, tuple[float, float]]:
  """Each jitter op's parameter range (low, high) at `strength` s.

  Brightness, contrast and saturation factors U(1 - 0.8s, 1 + 0.8s)
  (SimCLR's), floored at 0; the hue shift U(-0.2s, 0.2s) turns, at most
  half a turn. Keyed and ordered as `JITTER_OPS`.
  """
  factor = 0.8 * strength
  hue = min(0.2 * strength, 0.5)
  factor_range = (max(0.0, 1.0 - factor), 1.0 + factor)
  return {"brightness": factor_range, "contrast": factor_range,
          "saturation": factor_range, "hue": (-hue, hue)}


# An implementation's op: (image, key, **settings) -> image, or
# (image, **settings) for an op without draws of its own (`ColourOp`).
ImageOp = Callable[..., Any]
# (fn, image, key, prob) -> fn(image) with probability prob, else image.
RandomApply = Callable[[Callable[[Any], Any], Any, Any, float], Any]


def apply_colour_stage(image, view_subkeys: Sequence[Any],
                       params: AugmentParams, ops: Mapping[str, ImageOp],
                       random_apply: RandomApply):
  """Runs `colour_stage(params)` with one implementation's ops.

  view_subkeys: the view's `NUM_VIEW_SUBKEYS` keys, in `VIEW_SUBKEYS`
  order. ops: op name -> its function in this implementation. Raises
  ValueError if the stage needs an op the implementation lacks.
  """
  for op in colour_stage(params):
    if op.name not in ops:
      raise ValueError(f"The colour op {op.name!r} has no implementation "
                       f"here (these have: {sorted(ops)}).")
    key = None if op.key is None else view_subkeys[subkey(op.key)]
    apply_key = (None if op.apply_key is None
                 else view_subkeys[subkey(op.apply_key)])
    image = random_apply(_bound(ops[op.name], key, op.settings), image,
                         apply_key, op.prob)
  return image


def _bound(fn: ImageOp, key, settings: Mapping[str, Any]
          ) -> Callable[[Any], Any]:
  """image -> fn(image, key, **settings), or without key when it is None."""
  if key is None:
    return lambda image: fn(image, **settings)
  # Positional: the host's ops name it `seed`, the device's `key`.
  return lambda image: fn(image, key, **settings)
