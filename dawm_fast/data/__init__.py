"""Offline datasets: loading (Minari, D4RL files, embedded), windows, normalizers, scores.

Imports nothing else of dawm_fast: every other module may depend on data, not the reverse.
"""
from .dataset import DatasetError, OfflineDataset
from .loader import SOURCES, load_dataset
from .normalizers import CDFNormalizer, GaussianNormalizer, MinMaxNormalizer, Normalizer
from .scores import normalized_score
from .tasks import ENV_FAMILIES, TASK_NAMES, EnvFamily, UnknownTaskError, env_family, parse_task
from .windows import PAST_FALL_REWARDS, TrajectoryWindows, discounted_returns_to_go, make_windows

__all__ = [
    "DatasetError", "OfflineDataset", "SOURCES", "load_dataset", "CDFNormalizer",
    "GaussianNormalizer", "MinMaxNormalizer", "Normalizer", "normalized_score", "ENV_FAMILIES",
    "TASK_NAMES", "EnvFamily", "UnknownTaskError", "env_family", "parse_task",
    "PAST_FALL_REWARDS", "TrajectoryWindows", "discounted_returns_to_go", "make_windows",
]
