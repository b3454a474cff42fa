"""Simulating federations on one machine: splitting a data set among virtual clients.

Federated methods are judged by how they cope with clients whose data differ (label skew,
quantity skew, clients that see only a few classes). ``partition`` produces those splits
reproducibly from a seed, so a benchmark's figures can be regenerated exactly.

The rest is imported from its own module, so that importing a partitioner stays cheap:
``workload`` (what a simulation trains, behind a protocol), ``config`` (experiment
files), ``runner`` (the real coordinator and virtual participants in one process tree),
``workers`` (training in worker processes) and ``experiment`` (a config, run).
"""

from fedvc.simulation.partition import (
    PartitionError,
    dirichlet,
    iid,
    partition_table,
    quantity_skew,
    shards,
    stratified_holdout,
)

__all__ = [
    "PartitionError",
    "dirichlet",
    "iid",
    "partition_table",
    "quantity_skew",
    "shards",
    "stratified_holdout",
]
