"""The batched training engine: one code path for one model and for a thousand."""

from .engine import TrainConfig, TrainResult, TrainState, evaluate, train
from .layout import ChunkLayout, chunk_layout
from .objective import Objective
from .optim import LBFGS, SGD, Adam, Optimizer, StepContext

__all__ = ["LBFGS", "SGD", "Adam", "ChunkLayout", "Objective", "Optimizer", "StepContext",
           "TrainConfig", "TrainResult", "TrainState", "chunk_layout", "evaluate", "train"]
