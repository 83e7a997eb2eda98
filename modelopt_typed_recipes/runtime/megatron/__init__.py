"""The Megatron-Core backend: the only code that builds Megatron-Core models and calls ModelOpt on them.

``backend.run(recipe, plan)`` is what ``run_post_training`` dispatches to; ``build``, ``data`` and
``stages`` are its parts (model from the architecture, calibration windows, the ModelOpt calls).
"""
