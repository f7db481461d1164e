"""TrainConfig: every training option in one dataclass, with its default and help. `csae train`'s flags are made
from its fields (cli.py), so a new option needs only a field here and its use in loop.py or step.py."""
import dataclasses
import math
import numbers

import numpy as np
import torch

from ..models import INITS, VARIANTS
from ..utils import positive_int

__all__ = ["TrainConfig", "DEFAULT_STEPS", "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_AUX_WEIGHT", "DEFAULT_TAU",
           "DEFAULT_PAIRS_WEIGHT"]

# Defaults measured on 117,659 MiniLM items (d=384) with h=4096, k=32 on a 2-core CPU; see README.
DEFAULT_STEPS = 5000
DEFAULT_BATCH = 1024
DEFAULT_LR = 3e-3
DEFAULT_AUX_WEIGHT = 1 / 32   # Gao et al. 2024 and CSR
DEFAULT_TAU = 0.2             # CSR's temperature for retrieval pairs
DEFAULT_PAIRS_WEIGHT = 0.1    # CSR's contrastive coefficient for text retrieval


def _option(default, help: str, **metadata):
    """A dataclass field with its help (and, for choices, the allowed values) in the metadata."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The options of a training run; each field's metadata["help"] says what it does.

    Building one checks every option that does not depend on the data or the model (aux_k's upper bound, h,
    is checked by train once the model is known).

    Raises
    ------
    TypeError
        An option of the wrong Python type (a float where an int goes, a string where a number goes).
    ValueError
        An option of the right type but out of range, or not one of its choices.
    """

    h: int = _option(4096, "latents (dictionary size)")
    k: int = _option(32, "non-zeros per code, in 1..h")
    variant: str | None = _option(None, "compressae: signed codes; csr: non-negative codes, pre-bias, tied decoder "
                                        "(default: compressae, or the given model's)", choices=VARIANTS)
    steps: int = _option(DEFAULT_STEPS, "optimiser steps")
    batch_size: int = _option(DEFAULT_BATCH, "items per step (at most the number of items)")
    lr: float = _option(DEFAULT_LR, "Adam learning rate")
    warmup: float = _option(0.02, "share of the steps over which the learning rate warms up linearly")
    decay: float = _option(0.2, "share of the steps, at the end, over which the learning rate decays linearly to 0")
    seed: int = _option(0, "seeds the initial weights and the batch order")
    device: str | torch.device | None = _option(None, "cpu or cuda (default: cuda when available)")
    dead_window: int | None = _option(None, "a latent is dead when it fired for none of the last this many items "
                                            "(default: one pass over the data, at most 1,000,000)")
    init: str = _option("transpose", "encoder start: transpose (the decoder's transpose) or random", choices=INITS)
    tied: bool | None = _option(None, "csr: a decoder tied to the encoder's transpose (default: tied for csr)")
    aux_k: int | None = _option(None, "AuxK dead latents per item, 0 = off (default: max(2k, d/2) for csr, "
                                      "off for compressae)")
    aux_weight: float = _option(DEFAULT_AUX_WEIGHT, "weight of the AuxK term")
    pairs_weight: float = _option(DEFAULT_PAIRS_WEIGHT, "weight of the InfoNCE term on the pairs")
    tau: float = _option(DEFAULT_TAU, "InfoNCE temperature")
    resident: bool | None = _option(None, "hold the normalised items in device memory (bf16 on CUDA) instead of "
                                          "streaming them (default: when they take at most a quarter of the free "
                                          "device memory; on the CPU, of the available RAM, at most 4 GiB)")
    pairs_batch: int | None = _option(None, "pairs per step for the InfoNCE term, >= 2 (default: batch_size, "
                                            "at most the number of pairs)")

    def __post_init__(self):
        positive_int(self.h, "h")
        positive_int(self.k, "k")
        positive_int(self.steps, "steps")
        positive_int(self.batch_size, "batch_size")
        _choice(self.variant, "variant", VARIANTS, optional=True)
        _choice(self.init, "init", INITS)
        if not (math.isfinite(_number(self.lr, "lr")) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        for name in ("warmup", "decay"):
            if not 0 <= _number(getattr(self, name), name) <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {getattr(self, name)!r}")
        if _integer(self.seed, "seed") < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed}")
        if self.device is not None and not isinstance(self.device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(self.device).__name__}")
        if self.dead_window is not None:
            positive_int(self.dead_window, "dead_window")
        if self.tied is not None and not isinstance(self.tied, bool):
            raise TypeError(f"tied must be True, False or None, got {type(self.tied).__name__} {self.tied!r}")
        if self.resident is not None and not isinstance(self.resident, bool):
            raise TypeError(f"resident must be True, False or None, got {type(self.resident).__name__} "
                            f"{self.resident!r}")
        if self.aux_k is not None:
            _integer(self.aux_k, "aux_k")  # its range, 0..h, is checked against the model
        if not (math.isfinite(_number(self.tau, "tau")) and self.tau > 0):
            raise ValueError(f"tau must be a positive number, got {self.tau!r}")
        for name in ("aux_weight", "pairs_weight"):
            value = _number(getattr(self, name), name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.pairs_batch is not None and _integer(self.pairs_batch, "pairs_batch") < 2:
            raise ValueError(f"pairs_batch must be an int >= 2 (in-batch negatives), got {self.pairs_batch!r}")


def _integer(value, name: str) -> int:
    """value as an int; TypeError unless it is one (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _number(value, name: str) -> float:
    """value as a float; TypeError unless it is a real number (NaN and Inf pass: the caller's range check)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _choice(value, name: str, choices: tuple, optional: bool = False) -> None:
    """TypeError unless value is a str (or None when optional); ValueError unless it is one of choices."""
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
