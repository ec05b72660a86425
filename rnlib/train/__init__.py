"""rnlib.train: train state and jit steps, schedules, data (in memory; ImageNet folders on grain), sharding,
checkpoints, and `fit` (the CLI's loop)."""
from rnlib.train._checkpoint import Checkpointer
from rnlib.train._data import (ArrayLoader, Augment, BatchLoader, Dataset, augment_batch, load_cifar10, load_dataset,
                              load_digits)
from rnlib.train._imagenet import ImageFolderData, ImageFolderLoader, load_imagenet
from rnlib.train._loop import NonFiniteLossError, TrainConfig, TrainResult, evaluate, fit
from rnlib.train._schedules import make_optimizer, make_schedule, paper_schedule
from rnlib.train._sharding import DataParallel
from rnlib.train._state import (TrainState, create_train_state, eval_step_fn, init_module, make_eval_step,
                               make_train_step, params_sha256, train_step_fn)

__all__ = [
    "Checkpointer", "ArrayLoader", "Augment", "BatchLoader", "Dataset", "augment_batch", "load_cifar10", "load_dataset",
    "load_digits", "ImageFolderData", "ImageFolderLoader", "load_imagenet",
    "NonFiniteLossError", "TrainConfig", "TrainResult", "evaluate", "fit",
    "make_optimizer", "make_schedule", "paper_schedule", "DataParallel",
    "TrainState", "create_train_state", "init_module", "eval_step_fn", "make_eval_step", "make_train_step",
    "params_sha256", "train_step_fn",
]
