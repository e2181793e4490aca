"""The tables of protocols and `--mode`s: what runs, on which encoder.

`PROTOCOLS` is every way this code scores an encoder, one entry each
(`Protocol`): its name (its results' prefix and its config section), its
kind, and the function that runs it. `MODES` says, for each `--mode`,
where its encoder comes from and which protocols run on it:

| mode | encoder | protocols |
| --- | --- | --- |
| pretrain | pretrained by this command, in --workdir | - |
| all | pretrained by this command, in --workdir | knn, fewshot, feature_probe |
| knn_eval | evaluated: eval.encoder_file, else --workdir's step eval.step (default the latest) | knn |
| fewshot_eval | evaluated, as above | fewshot |
| feature_probe_eval | evaluated, as above | feature_probe |
| linear_eval | evaluated, as above | linear_eval |
| finetune | finetune.init_from: an exported file, another pretraining workdir (step finetune.init_step), or "" for a random initialisation | finetune |

The orchestrator (`experiment.train_and_evaluate`) reads both tables and
nothing else: it runs a mode's FROZEN_FEATURES protocols together on
features extracted once (`evaluation.evaluator.evaluate`), then each
TRAINED protocol in the training loop. The checks before any work
(`config_validation.validate_workdir`) read MODES too.
`encoder_source(config, workdir)` applies MODES to a config; the source
is loaded by `encoder_sources.load_encoder`.
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence

import ml_collections

from mio_jax import encoder_sources
from mio_jax import errors
from mio_jax import supervised
from mio_jax.evaluation import protocols as feature_protocols

# How a protocol runs.
FROZEN_FEATURES = "frozen_features"  # on the frozen encoder's features
TRAINED = "trained"  # trained in the loop (supervised)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One way to score an encoder.

  name: the prefix of its results ("knn" -> "knn_top1") and its config
    section (`config.knn`).
  kind: FROZEN_FEATURES: run(train, test, *, num_classes, settings, seed)
      -> results, on `evaluation.Features` of the train and test splits
      (settings: its config section);
    TRAINED: run(config, workdir, mesh, encoder, *, logger, preemption)
      -> (the step its results belong to, results), a training of its own
      on the `encoder_sources.LoadedEncoder`.
  """
  name: str
  kind: str
  run: Callable[..., Any]


PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (
    Protocol("knn", FROZEN_FEATURES, feature_protocols.knn_protocol),
    Protocol("fewshot", FROZEN_FEATURES, feature_protocols.fewshot_protocol),
    Protocol("feature_probe", FROZEN_FEATURES,
             feature_protocols.feature_probe_protocol),
    Protocol("linear_eval", TRAINED, supervised.linear_eval),
    Protocol("finetune", TRAINED, supervised.finetune),
)}


def runs(names: Sequence[str], kind: str) -> dict[str, Callable[..., Any]]:
  """{name: run} of the protocols `names` (in their order) that run as `kind`.

  Raises errors.InvalidValueError for a name not in PROTOCOLS (listing
  them).
  """
  if isinstance(names, str):
    raise TypeError(f"protocols must be a sequence of names, not the string "
                    f"{names!r}; pass ({names!r},).")
  for name in names:
    errors.check_one_of("protocol", name, PROTOCOLS)
  return {name: PROTOCOLS[name].run for name in names
          if PROTOCOLS[name].kind == kind}


# Where a mode's encoder comes from.
PRETRAINED = "pretrained"  # trained by this command in --workdir
EVALUATED = "evaluated"  # eval.encoder_file, else --workdir at eval.step
FINETUNE_INIT = "finetune_init"  # finetune.init_from (or random)


@dataclasses.dataclass(frozen=True)
class Mode:
  encoder: str  # PRETRAINED | EVALUATED | FINETUNE_INIT
  # The protocols run on the encoder (names in PROTOCOLS), in this order.
  protocols: tuple[str, ...] = ()


# A mode that evaluates with one protocol is named after it: "<protocol>_eval"
# for a frozen-feature protocol; the trained ones' modes are their names.
MODES: dict[str, Mode] = {
    "pretrain": Mode(PRETRAINED),
    "all": Mode(PRETRAINED, ("knn", "fewshot", "feature_probe")),
    "knn_eval": Mode(EVALUATED, ("knn",)),
    "fewshot_eval": Mode(EVALUATED, ("fewshot",)),
    "feature_probe_eval": Mode(EVALUATED, ("feature_probe",)),
    "linear_eval": Mode(EVALUATED, ("linear_eval",)),
    "finetune": Mode(FINETUNE_INIT, ("finetune",)),
}


def encoder_source(config: ml_collections.ConfigDict, workdir: str
                  ) -> Optional[encoder_sources.EncoderSource]:
  """Where config.mode's encoder comes from; None when this command trains
  it."""
  mode = MODES[config.mode]
  if mode.encoder == PRETRAINED:
    return None
  if mode.encoder == EVALUATED:
    if config.eval.encoder_file:
      return encoder_sources.EncoderSource(encoder_sources.FILE,
                                           config.eval.encoder_file)
    return encoder_sources.EncoderSource(encoder_sources.WORKDIR, workdir,
                                         config.eval.step)
  source = config.finetune.init_from
  if not source:
    return encoder_sources.EncoderSource(encoder_sources.RANDOM)
  if encoder_sources.is_export(source):
    return encoder_sources.EncoderSource(encoder_sources.FILE, source)
  return encoder_sources.EncoderSource(encoder_sources.WORKDIR, source,
                                       config.finetune.init_step)
