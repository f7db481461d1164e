"""What the Triton kernel modules share: the launch options and the device a launch runs on."""
import contextlib

import torch

__all__ = ["FP_FUSION", "on_device"]

# Fused multiply-add on; passed at launch because triton 3.9 warns when the option is left to its default.
FP_FUSION = True


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context to launch a kernel on t's device in: Triton launches on the current CUDA device.

    Parameters
    ----------
    t : torch.Tensor
        A tensor the kernel reads.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.cuda.device(t.device)`` for a CUDA tensor, a no-op otherwise.
    """
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
