"""Launch profiles: a parallel layout plus checkpoint location and launch switches for one model on
one cluster shape. Not models: the seed keeps two of them (``conf/moonshotai/kimi_k2_instruct*.sh``)
beside the model files, where they read like architectures.

The layout sizes are plain ints here; the planner turns a profile into its own layout type.
"""

from __future__ import annotations

import attrs

from ..spec._validate import fail, one_of, positive_int
from ..spec.layout import stage_layers
from .registry import Registry


@attrs.frozen(kw_only=True)
class LaunchProfile:
    """How to launch one architecture: parallel sizes, uneven pipeline ends, init switches, checkpoint."""

    name: str
    arch: str
    """Registry name of the architecture it launches."""
    description: str = ""
    tensor_parallel: int = attrs.field(default=1, validator=positive_int)
    expert_tensor_parallel: int | None = attrs.field(default=None, validator=positive_int)
    """``None``: same as ``tensor_parallel`` (the seed's ``ETP=${TP}``)."""
    expert_parallel: int = attrs.field(default=1, validator=positive_int)
    pipeline_parallel: int = attrs.field(default=1, validator=positive_int)
    context_parallel: int = attrs.field(default=1, validator=positive_int)
    first_pipeline_num_layers: int | None = attrs.field(default=None, validator=positive_int)
    """``--decoder-first-pipeline-num-layers``: layers on the first stage when the split is uneven."""
    last_pipeline_num_layers: int | None = attrs.field(default=None, validator=positive_int)
    stage: str = attrs.field(default="quantize",
                             validator=one_of(("quantize", "auto-quantize", "prune", "export", "distill")))
    """The post-training stage the profile launches (``plan --profile`` plans it unless ``--stage`` says)."""
    init_model_with_meta_device: bool = False
    use_cpu_initialization: bool = False
    """Megatron-LM builds the model on the CPU; its export then keeps the weights in host memory."""
    checkpoint_path: str | None = None
    """Where the seed expects the HF checkpoint (``HF_MODEL_CKPT``)."""
    seed_file: str | None = None
    notes: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        uneven = self.first_pipeline_num_layers is not None or self.last_pipeline_num_layers is not None
        if uneven and self.pipeline_parallel < 2:
            raise fail("pipeline_parallel", "uneven first/last pipeline layers need pipeline_parallel >= 2")

    @property
    def model_parallel_size(self) -> int:
        """GPUs one model replica spans on the dense side: TP x PP x CP."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    def pipeline_layers(self, num_layers: int) -> tuple[int, ...]:
        """Layers per pipeline stage for a model of ``num_layers`` (the middle stages split the rest evenly);
        a :class:`LayoutError` (a :class:`SpecError`) when they do not split so."""
        return stage_layers(num_layers, self.pipeline_parallel, self.first_pipeline_num_layers,
                            self.last_pipeline_num_layers)

    def layout_fields(self) -> dict[str, int | None]:
        """The profile's sizes under ``ParallelLayout``'s field names (what a recipe's layout sets)."""
        return {
            "tensor_parallel": self.tensor_parallel,
            "expert_parallel": self.expert_parallel,
            "expert_tensor_parallel": self.expert_tensor_parallel,
            "pipeline_parallel": self.pipeline_parallel,
            "context_parallel": self.context_parallel,
            "first_stage_layers": self.first_pipeline_num_layers,
            "last_stage_layers": self.last_pipeline_num_layers,
        }

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "arch": self.arch,
            "tensor_parallel": self.tensor_parallel,
            "expert_tensor_parallel": self.expert_tensor_parallel or self.tensor_parallel,
            "expert_parallel": self.expert_parallel,
            "pipeline_parallel": self.pipeline_parallel,
            "context_parallel": self.context_parallel,
            "first_pipeline_num_layers": self.first_pipeline_num_layers,
            "last_pipeline_num_layers": self.last_pipeline_num_layers,
            "stage": self.stage,
            "use_cpu_initialization": self.use_cpu_initialization,
            "description": self.description,
        }


_KIMI_CKPT = "/workspace/scratch/moonshotai/Kimi-K2-Instruct"

_BUILTIN = (
    # conf/moonshotai/kimi_k2_instruct.sh: TP=8 ETP=1 EP=64 (ADVANCED.md: 8 x DGX H100 = 64 GPUs)
    LaunchProfile(
        name="kimi-k2-instruct",
        arch="kimi-k2-instruct",
        description="Kimi-K2 quantization on 8 nodes x 8 H100: TP 8, expert TP 1, EP 64",
        tensor_parallel=8, expert_tensor_parallel=1, expert_parallel=64,
        checkpoint_path=_KIMI_CKPT,
        seed_file="moonshotai/kimi_k2_instruct",
    ),
    # conf/moonshotai/kimi_k2_instruct_export.sh: PP=16 (export is pipeline-only) with 3 + 4x14 + 2 = 61 layers,
    # built on the meta device and initialised on the CPU so a quantized model materialises in low precision
    LaunchProfile(
        name="kimi-k2-instruct-export",
        arch="kimi-k2-instruct",
        description="Kimi-K2 export on 2 nodes: PP 16 with 3/2 layers on the first/last stage, meta-device init",
        pipeline_parallel=16, first_pipeline_num_layers=3, last_pipeline_num_layers=2, stage="export",
        init_model_with_meta_device=True, use_cpu_initialization=True,
        checkpoint_path=_KIMI_CKPT,
        seed_file="moonshotai/kimi_k2_instruct_export",
    ),
)


def _profile_keys(p: LaunchProfile) -> list[str]:
    keys = [p.name]
    if p.seed_file:
        keys.append(p.seed_file)
    return keys


PROFILES: Registry[LaunchProfile] = Registry(
    "launch profile",
    keys=_profile_keys,
    entry_point_group="modelopt_typed_recipes.launch_profiles",
    loaders=[lambda: _BUILTIN],
)


def get_profile(name: str) -> LaunchProfile:
    """A launch profile by name or seed file name (``moonshotai/kimi_k2_instruct``), any case."""
    return PROFILES.get(name)


def list_profiles(*, arch: str | None = None) -> list[LaunchProfile]:
    out = list(PROFILES)
    if arch is not None:
        out = [p for p in out if p.arch == arch]
    return out
