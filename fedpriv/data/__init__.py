"""Datasets and partitioners."""

from fedpriv.data.datasets import DATASETS, Dataset, DatasetSpec
from fedpriv.data.federated import FederatedData, federate
from fedpriv.data.flower_partition import FlowerPartition
from fedpriv.data.idx import read_idx, write_idx
from fedpriv.data.partition import PARTITIONS, PartitionSpec, label_histograms

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "Dataset",
    "DatasetSpec",
    "FederatedData",
    "FlowerPartition",
    "PartitionSpec",
    "federate",
    "label_histograms",
    "read_idx",
    "write_idx",
]
