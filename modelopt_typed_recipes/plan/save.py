"""Which stages write their model as a checkpoint, and why: one rule for both backends, known before the run.

Stages hand the model over in memory. A checkpoint costs minutes at real size (16 GB for an 8 B model, per
stage), so one is written only when the recipe asks (a stage's ``save``, else the recipe's ``save``
policy) or when it is what the user keeps: under ``auto``, the model after the last quantize/prune/distill stage
when no export follows it. Moving the model between parallel layouts through a temporary checkpoint is a
hand-over, not a save; the Megatron-Core backend reports it separately.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..spec.recipe import Recipe

if TYPE_CHECKING:
    from ..spec.techniques import Stage


@attrs.frozen(kw_only=True)
class SaveDecision:
    """Whether stage ``index`` writes its model, and the reason the manifest gives."""

    index: int
    save: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"saved": self.save, "reason": self.reason}


def changes_model(stage: Stage) -> bool:
    """Stages whose result is a new model state, the ones with a ``save`` field (quantize, auto_quantize,
    prune, and any technique that declares one); export only writes the current model out."""
    return any(a.name == "save" for a in getattr(type(stage), "__attrs_attrs__", ()))


def save_decisions(recipe: Recipe) -> tuple[SaveDecision | None, ...]:
    """One decision per stage (``None`` for stages that leave the model as it is, such as export)."""
    stages = recipe.stages
    model_stages = [i for i, s in enumerate(stages) if changes_model(s)]
    last = model_stages[-1] if model_stages else None
    export_at = next((i for i, s in enumerate(stages) if s.technique == "export"), None)
    out: list[SaveDecision | None] = []
    for i, stage in enumerate(stages):
        if not changes_model(stage):
            out.append(None)
            continue
        own = getattr(stage, "save", None)
        if own is not None:
            out.append(SaveDecision(index=i, save=own, reason=f"stages[{i}].save: {str(own).lower()}"))
            continue
        policy = recipe.save
        later = next((j for j in model_stages if j > i), None)
        if policy == "all":
            out.append(SaveDecision(index=i, save=True, reason="save: all"))
        elif policy == "none":
            out.append(SaveDecision(index=i, save=False, reason="save: none"))
        elif i != last:
            out.append(SaveDecision(index=i, save=False,
                                    reason=f"save: {policy}: handed over in memory to stages[{later}]"))
        elif policy == "final":
            out.append(SaveDecision(index=i, save=True, reason="save: final: the final model"))
        elif export_at is not None:
            out.append(SaveDecision(index=i, save=False,
                                    reason=f"save: auto: stages[{export_at}] exports the final model"))
        else:
            out.append(SaveDecision(index=i, save=True, reason="save: auto: the final model (no export follows)"))
    return tuple(out)
