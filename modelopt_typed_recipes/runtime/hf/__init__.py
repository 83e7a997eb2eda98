"""The Hugging Face (transformers) backend: the same recipes on any machine, the CPU included.

ModelOpt fake-quantizes plain ``nn.Linear`` layers of a transformers model on the CPU for FP8, INT8,
INT8-SmoothQuant, INT4-AWQ and W4A8; NVFP4 and MX formats need CUDA and are refused before any work.
Modules: ``model`` (build or load), ``quantize`` (configs, calibration, summaries), ``evaluate``
(perplexity), ``export`` (ModelOpt's unified HF export and its re-load), ``backend`` (the stages).
"""
