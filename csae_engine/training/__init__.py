"""Training: TrainConfig (every option, the source of `csae train`'s flags), train_step (one optimiser step) and
train (the loop over batches of items held on the device, or streamed when they do not fit).

- config.py: TrainConfig and the measured defaults;
- step.py: train_step, StepOutput and the learning-rate schedule lr_factor;
- loop.py: train and check_pairs;
- batches.py: the resident and the streamed batches.
"""
from .config import (DEFAULT_AUX_WEIGHT, DEFAULT_BATCH, DEFAULT_LR, DEFAULT_PAIRS_WEIGHT, DEFAULT_STEPS, DEFAULT_TAU,
                     TrainConfig)
from .loop import check_pairs, train
from .step import StepOutput, lr_factor, train_step

__all__ = ["TrainConfig", "train", "train_step", "StepOutput", "lr_factor", "check_pairs", "DEFAULT_STEPS",
           "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_AUX_WEIGHT", "DEFAULT_TAU", "DEFAULT_PAIRS_WEIGHT"]
