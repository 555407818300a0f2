"""What the ops' fake (meta) implementations share.

A fake serves torch.compile's tracing and also the Meta dispatch key, which takes an eager call whose
tensors mix meta and cpu (a buffer left on meta by a deferred initialisation). The kernel's device check never
runs there, so without one here that call returns an uninitialised cpu tensor instead of an error."""

from __future__ import annotations


def check_devices(op: str, first: str, tensors: dict) -> None:
    """ValueError naming the first of `tensors` (name -> tensor or None) not on the device of tensors[first]."""
    device = tensors[first].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but '{first}' is on {device}")
