"""Splitting work into shards of about equal cost. Plain Python."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def lpt_shards(items: Sequence[Any], n_shards: int, cost: Callable[[Any], float]) -> list[list[Any]]:
    """Split items into n_shards lists of about equal total cost (longest-processing-time-first), each list
    kept in the items' order, the costliest shard first."""
    n_shards = max(1, min(n_shards, len(items)))
    loads = [0.0] * n_shards
    members: list[list[int]] = [[] for _ in range(n_shards)]
    for index in sorted(range(len(items)), key=lambda i: -cost(items[i])):
        target = min(range(n_shards), key=lambda s: (loads[s], len(members[s])))
        loads[target] += cost(items[index])
        members[target].append(index)
    order = sorted(range(n_shards), key=lambda s: -loads[s])
    return [[items[i] for i in sorted(members[s])] for s in order if members[s]]
