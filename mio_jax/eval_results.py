"""`eval_results.json`: every result a workdir has produced, side by side.

One entry per protocol and step, keyed "<protocol>@step_<step>"
("knn@step_40", "linear_eval@step_40", "finetune@step_90"), holding that
protocol's results without its prefix ({"top1": ..., "top5": ...}). The
step is the one the result counts: the encoder's pretraining step for the
frozen-feature protocols and `linear_eval`, the fine-tuning steps for
`finetune`. A rerun of the same evaluation replaces its own entry only.

The file of an earlier build ({"step": N, "knn_top1": ..., ...}: only the
last command's results) is read as the entries it holds.
"""
import re
from typing import Any, Iterable, Mapping, Optional

_KEY = re.compile(r"^(?P<protocol>.+)@step_(?P<step>\d+)$")


def key(protocol: str, step: int) -> str:
  """The entry of `protocol`'s result at `step`, e.g. "knn@step_40"."""
  return f"{protocol}@step_{int(step)}"


def entries(step: int, results: Mapping[str, Any],
            protocols: Iterable[str]) -> dict[str, dict[str, Any]]:
  """{key(protocol, step): {result: value}} of flat results
  {"<protocol>_<result>": value} ("fewshot_top1_std" -> "fewshot", "top1_std").

  Raises ValueError for a result of none of `protocols`.
  """
  # Longest first: a protocol name may be the prefix of another's.
  names = sorted(protocols, key=len, reverse=True)
  grouped: dict[str, dict[str, Any]] = {}
  for name, value in results.items():
    protocol = next((p for p in names if name.startswith(f"{p}_")), None)
    if protocol is None:
      raise ValueError(f"result {name!r} is of none of the protocols "
                       f"{sorted(names)}")
    grouped.setdefault(key(protocol, step), {})[
        name.removeprefix(f"{protocol}_")] = value
  return grouped


def _order(entry_key: str) -> tuple[str, int]:
  match = _KEY.match(entry_key)
  return (match["protocol"], int(match["step"])) if match else (entry_key, -1)


def merge(stored: Optional[Mapping[str, Any]], step: int,
          results: Mapping[str, Any], protocols: Iterable[str]
         ) -> dict[str, Any]:
  """The file's new contents: `stored` (None: no file yet) with the entries
  of `results` at `step` added or replacing their own.

  protocols: every protocol name a result may start with (also those of an
  earlier build's file). Entries are ordered by protocol, then step.
  """
  protocols = tuple(protocols)
  stored = dict(stored or {})
  if isinstance(stored.get("step"), int):  # an earlier build's file
    earlier_step = stored.pop("step")
    stored = entries(earlier_step, stored, protocols)
  merged = {**stored, **entries(step, results, protocols)}
  return {k: merged[k] for k in sorted(merged, key=_order)}
