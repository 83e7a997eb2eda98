"""Test helper: the command line with the Megatron-Core backend on the CPU, for the kill-and-resume tests.

``python tests/_megatron_cpu_cli.py [--kill-at MOMENT] ARGS...`` runs ``python -m modelopt_typed_recipes ARGS``
(through ``tests/kill_at.py`` when a moment is given) in a process where:

- the machine reports CUDA and megatron-core 0.19 (``check`` allows the backend and its export), but the run's
  plan says CPU and fp32: Megatron-Core runs on gloo through the TEST-ONLY ``megatron_cpu_shim``;
- ModelOpt's Megatron -> HF exporter (which megatron-core 0.16, the CPU machine's, cannot import) is replaced by
  a writer of the reference ``config.json``, a small ``model.safetensors`` and each rank's tensors
  (``rankN.safetensors``, to compare runs): what is tested is the run around
  it (journal, checkpoints, kill, resume, lock, swap), the same code the GPU test drives with the real exporter.

Under ``torch.distributed.run`` each rank runs this script (the environment torchrun sets decides the world).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _patch() -> None:
    import attrs

    from modelopt_typed_recipes.plan import environment
    from modelopt_typed_recipes.runtime import api
    from modelopt_typed_recipes.runtime.megatron import stages

    env = environment.Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=2)
    environment.Environment.detect = classmethod(lambda cls: env)  # type: ignore[method-assign]
    real_plan = api.plan_run
    api.plan_run = lambda *a, **k: attrs.evolve(real_plan(*a, **k), device="cpu", dtype="fp32")

    def export_hf(model, hf_reference, export_dir, **_kw):
        import torch
        import torch.distributed as dist
        from safetensors.torch import save_file

        rank = dist.get_rank() if dist.is_initialized() else 0
        # each rank's tensors (weights, quantizer amax; not the pickled _extra_state): runs compared tensor by tensor
        tensors = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()
                   if isinstance(v, torch.Tensor) and "_extra_state" not in k}
        save_file(tensors, str(Path(export_dir) / f"rank{rank}.safetensors"))
        if rank != 0:
            return
        cfg = json.loads((Path(hf_reference) / "config.json").read_text())
        (Path(export_dir) / "config.json").write_text(json.dumps(cfg))
        first = next(model.parameters()).detach().float().contiguous().clone()
        save_file({"first": first}, str(Path(export_dir) / "model.safetensors"))

    stages.export_hf = export_hf


def main() -> int:
    argv = sys.argv[1:]
    moment = None
    if argv[:1] == ["--kill-at"]:
        moment, argv = argv[1], argv[2:]
    _patch()
    from megatron_cpu_shim import megatron_on_cpu

    with megatron_on_cpu():
        if moment is None:
            from modelopt_typed_recipes.cli import main as cli

            return cli(argv)
        import kill_at

        sys.argv = ["kill_at.py", moment, *argv]
        return kill_at.main()


if __name__ == "__main__":
    raise SystemExit(main())
