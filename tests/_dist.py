"""Test helper: the one way tests start torch.distributed (a gloo world of one on the CPU).

The port is found by binding to port 0 (the runtime's ``free_port``), never fixed: a fixed port fails
with "address already in use" when another run on the machine holds it. ``MASTER_ADDR``/``MASTER_PORT``
are set only while the process group starts, so later tests (launch plans read ``MASTER_PORT``) see the
environment they had.
"""

from __future__ import annotations

import os


def init_gloo_world() -> None:
    """Start a world of one through the runtime's ``init_process_group`` (no-op when one is running)."""
    import torch.distributed as dist

    from modelopt_typed_recipes.runtime import distributed

    if dist.is_initialized():
        return
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(distributed.free_port())
    try:
        distributed.init_process_group(device="cpu")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
