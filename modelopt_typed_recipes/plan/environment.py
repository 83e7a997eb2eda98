"""What the machine offers, probed without importing torch: package versions from metadata, Transformer
Engine from ``importlib.util.find_spec``, the GPU from nvidia-ml-py (or the ``/dev/nvidia*`` nodes), pulp's
CBC solver when a stage asks for it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import attrs


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"0.18.0rc1"`` -> ``(0, 18, 0)``; None when there is no version."""
    if not text:
        return None
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe_lp_solver() -> str | None:
    """Why pulp's CBC solver cannot run here, or None when it can.

    ``mtq.auto_quantize`` chooses its formats with it (``PULP_CBC_CMD``, a binary inside the pulp wheel) only
    after every candidate's calibration and scoring, so a pulp without it (a slimmed wheel, an unsupported
    platform) would fail late with pulp's traceback. pulp is imported here, in the call (about 0.1 s; once per
    auto-quantize stage that ``check_recipe`` checks), never on the package's import.
    """
    try:
        import pulp
    except ImportError as exc:
        return f"pulp does not import here ({exc})"
    import warnings

    with warnings.catch_warnings():  # pulp 3.3 marks the class deprecated for 4.0; ModelOpt 0.47 still uses it
        warnings.simplefilter("ignore")
        if pulp.PULP_CBC_CMD(msg=False).available():  # the solver ModelOpt's search builds
            return None
    return "pulp's CBC solver is not available here"


@attrs.frozen(kw_only=True)
class Environment:
    """What the machine offers, read without importing torch."""

    megatron_core: str | None = None
    modelopt: str | None = None
    transformer_engine: bool = False
    cuda: bool = False
    gpu_name: str | None = None
    gpu_count: int = 0
    lp_solver: bool | None = None
    """Whether pulp's CBC solver runs here; None: not probed yet (:meth:`lp_solver_problem` probes on the first
    ask, so only recipes that need it pay pulp's import)."""

    @classmethod
    def detect(cls) -> Environment:
        te = importlib.util.find_spec("transformer_engine") is not None
        gpu_name, count = None, 0
        try:
            from .gpus import detect as detect_gpu

            spec = detect_gpu()
            if spec is not None:
                gpu_name, count = spec.name, 1
        except Exception:  # noqa: BLE001 - nvidia-ml-py absent or broken: fall back to the device nodes
            spec = None
        if count == 0:
            nodes = sorted(Path("/dev").glob("nvidia[0-9]*"))
            count = len(nodes)
        return cls(
            megatron_core=dist_version("megatron-core"),
            modelopt=dist_version("nvidia-modelopt"),
            transformer_engine=te,
            cuda=count > 0 or os.environ.get("MTR_ASSUME_CUDA") == "1",
            gpu_name=gpu_name,
            gpu_count=count,
        )

    def lp_solver_problem(self) -> str | None:
        """Why pulp's CBC solver cannot run here (``lp_solver``, or :func:`probe_lp_solver` when unset), or None."""
        if self.lp_solver is None:
            return probe_lp_solver()
        return None if self.lp_solver else "pulp's CBC solver is not available here"

    def mcore_at_least(self, version: tuple[int, int]) -> bool:
        v = version_tuple(self.megatron_core)
        return v is not None and v[:2] >= version
