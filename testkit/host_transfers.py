"""A dispatch-mode counter of what makes a GPU stream wait for the host.

A copy from the CPU to a device, or a read of a device tensor's value, blocks the host until the
device's queue has drained, so a denoising loop that does one per step cannot queue its next step
while the device works. The counter sees the ops themselves, so it also counts on the meta device
(shapes only), where the tests run it without a GPU.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostTransfers(TorchDispatchMode):
    """Counts what makes a GPU stream wait for the host: copies from the CPU to another device,
    and reads of a device tensor's value (`item`, `nonzero`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        result = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.to, aten._to_copy):  # inference mode dispatches `to` itself
            self.count += args[0].device.type == "cpu" and result.device.type != "cpu"
        elif packet in (aten.copy_, aten.copy):
            self.count += args[1].device.type == "cpu" and args[0].device.type != "cpu"
        elif packet in (aten._local_scalar_dense, aten.nonzero):
            self.count += args[0].device.type != "cpu"
        return result
