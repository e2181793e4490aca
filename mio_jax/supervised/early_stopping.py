"""Early stopping on a validation split: the public MIO code's linear head.

Its `Trainer.downstream` scores the head on a held-out validation split
after every epoch, keeps the head of the lowest validation loss (ties go
to the later epoch: `val_loss <= min(valid_losses)`), stops once that has
not improved for more than `patience` epochs, and tests the kept head.

Here the record lives in the checkpointed state (`Best`), so a resumed
run keeps it; `after_step` updates it at each epoch's end (the batches
stream across epochs, so an epoch ends inside the step that crosses it)
and `stopped` tells the loop to stop.
"""
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp

from mio_jax.supervised import task as task_lib


@flax.struct.dataclass
class Best:
  """The head of the lowest validation loss so far, and epochs since."""
  params: Any
  batch_stats: Any
  loss: jax.Array  # float32 scalar; inf before the first epoch ends
  waited: jax.Array  # int32: epochs since the best one


def initial_best(task: task_lib.Task, variables) -> Best:
  template = task_lib.init_state(task, variables)
  return Best(params=template.params, batch_stats=template.batch_stats,
              loss=jnp.asarray(jnp.inf, jnp.float32),
              waited=jnp.zeros((), jnp.int32))


def epoch_ended(done: int, *, batch_size: int, num_examples: int) -> bool:
  """Whether step `done` (1-based) crossed the end of an epoch."""
  return done * batch_size // num_examples > (done - 1) * batch_size // num_examples


def after_step_fn(task: task_lib.Task, frozen, *, num_examples: int,
                  validation_batches: Callable[[], Any]
                 ) -> Callable[[int, Any], tuple[Any, Optional[dict]]]:
  """The loop's after_step: at each epoch's end, validate and keep the best."""

  def after_step(done: int, state):
    if not epoch_ended(done, batch_size=task.batch_size,
                       num_examples=num_examples):
      return state, None
    result = task_lib.accuracy(task, state.params, state.batch_stats, frozen,
                               validation_batches())
    best = state.best
    if result["loss"] <= float(best.loss):
      # Copies: the step donates the state it is given, best included.
      best = Best(params=jax.tree.map(jnp.copy, state.params),
                  batch_stats=jax.tree.map(jnp.copy, state.batch_stats),
                  loss=jnp.asarray(result["loss"], jnp.float32),
                  waited=jnp.zeros((), jnp.int32))
    else:
      best = best.replace(waited=best.waited + 1)
    return state.replace(best=best), {
        "val_loss": result["loss"], "val_top1": result["top1"],
        "val_epochs_since_best": int(best.waited)}

  return after_step


def stopped_fn(patience: int) -> Callable[[Any], bool]:
  """The loop's stop: more than `patience` epochs without a better head."""
  return lambda state: int(state.best.waited) > patience
