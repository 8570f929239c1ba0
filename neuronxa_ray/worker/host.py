"""Device-to-host copies that overlap compute: pinned buffers filled on a side stream on CUDA, the tensors
themselves on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch


class HostCopy:
    """Tensors on their way to host memory: on CUDA, pinned buffers filled on a side stream (overlapping the next
    language's forward passes); `arrays()` waits for the copy. On a CPU, the tensors themselves."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self._event = None
        if not tensors or next(iter(tensors.values())).device.type != "cuda":
            self._host = {k: t.detach() for k, t in tensors.items()}
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._host = {}
            for k, t in tensors.items():
                self._host[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                self._host[k].copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(stream)
        self._sources = tensors  # alive until the copy is done

    def arrays(self) -> dict[str, np.ndarray]:
        event = self._event  # read once: the writer thread and the caller may both ask
        if event is not None:
            event.synchronize()
            self._sources = None
        return {k: t.numpy() for k, t in self._host.items()}
