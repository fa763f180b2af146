"""The batched training engine: one code path for one model and for a thousand."""

from .engine import TrainConfig, TrainResult, TrainState, evaluate, train
from .layout import ChunkLayout, chunk_layout

__all__ = ["ChunkLayout", "TrainConfig", "TrainResult", "TrainState", "chunk_layout", "evaluate",
           "train"]
