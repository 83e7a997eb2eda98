"""lm-eval tasks (EleutherAI's lm-evaluation-harness) through its Python API, on a Hugging Face model.

``check`` runs in ``run_post_training``'s pre-flight, before any model is built: the task names are in
lm-eval's index (with the recipe's ``include_path``), their data loads on this machine and reports the
recipe's metric. ``run`` wraps the model in memory in lm-eval's ``HFLM`` and calls ``simple_evaluate``. The
``lm-eval`` extra is optional: without it the plan refuses the task (``plan/tasks.py``) and nothing here runs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ...errors import CompatibilityError, DataError, UnknownNameError, did_you_mean
from ...spec.evaluation import LMEval

_OFFLINE_HINT = ("point the task's YAML in include_path at files on this machine (dataset_path: json, "
                 "dataset_kwargs: {data_files: ...}), or fill the Hugging Face datasets cache and set "
                 "HF_DATASETS_OFFLINE=1")


@functools.lru_cache(maxsize=8)
def _index(include: str | None, defaults: bool) -> Any:
    """lm-eval's task index, built once per process: its own ~15,000 tasks take half a minute to index on a
    loaded 2-core machine, a folder of the user's YAML files a fraction of a second."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults)


def _task_manager(task: LMEval, path: str) -> Any:
    """The index that knows the task's names: ``include_path`` alone when it holds them all, else with
    lm-eval's own tasks."""
    try:
        import lm_eval.tasks  # noqa: F401
    except ImportError as exc:
        raise CompatibilityError(f"lm-eval does not import here ({exc})", path=f"{path}.task",
                                 hint="pip install 'modelopt-typed-recipes[lm-eval]'") from None
    include = None
    if task.include_path is not None:
        folder = Path(task.include_path).expanduser()
        if not folder.is_dir():
            raise DataError(f"include_path {task.include_path!r} is not a folder", path=f"{path}.include_path",
                            hint="a folder of lm-eval task YAML files")
        include = str(folder.resolve())
        local = _index(include, False)
        if all(name in local.all_tasks for name in task.tasks):
            return local
    return _index(include, True)


def check(task: LMEval, *, path: str) -> None:
    """Names known, data on this machine, the metric reported: each a typed error at ``tasks[i]...``."""
    manager = _task_manager(task, path)
    known = set(manager.all_tasks)
    for j, name in enumerate(task.tasks):
        if name not in known:
            raise UnknownNameError(f"lm-eval has no task {name!r}", path=f"{path}.tasks[{j}]",
                                   hint=did_you_mean(name, known) or "give include_path, the folder of its YAML file")
    try:
        loaded = manager.load(list(task.tasks))  # builds each task, which reads its dataset
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many kinds; each means "no data here"
        raise DataError(f"lm-eval could not load {', '.join(task.tasks)}: {type(exc).__name__}: {exc}",
                        path=f"{path}.tasks", hint=_OFFLINE_HINT) from None
    for j, name in enumerate(task.tasks):
        leaf = loaded["tasks"].get(name)
        if leaf is not None and task.metric not in leaf.aggregation():
            raise DataError(f"lm-eval task {name!r} reports no {task.metric!r}", path=f"{path}.metric",
                            hint=f"its metrics: {', '.join(sorted(leaf.aggregation()))}")


def run(task: LMEval, model: Any, tokenizer: Any, *, device: Any, max_length: int, path: str,
        seed: int) -> tuple[float, int, dict[str, float]]:
    """(mean of ``task.metric`` over ``task.tasks``, items scored, each task's value) for ``model``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task.batch_size, device=str(device),
              max_length=max_length)
    out = simple_evaluate(model=lm, tasks=list(task.tasks), num_fewshot=task.num_fewshot, limit=task.limit,
                          task_manager=_task_manager(task, path), log_samples=False, bootstrap_iters=0,
                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if out is None:  # simple_evaluate returns None on ranks other than its own rank 0; we run it on one
        raise CompatibilityError("lm-eval returned no results", path=f"{path}.task", hint="backend: hf, one process")
    results, counts = out["results"], out.get("n-samples", {})
    values: dict[str, float] = {}
    for name in task.tasks:
        row = results.get(name, {})
        key = f"{task.metric},none"
        if key not in row:
            have = sorted({k.split(",")[0] for k in row if "," in k and "stderr" not in k})
            raise DataError(f"lm-eval task {name!r} reported no {task.metric!r}", path=f"{path}.metric",
                            hint=f"its metrics: {', '.join(have) or 'none'}")
        values[name] = float(row[key])
    total = sum(int(c.get("effective", 0)) for c in counts.values() if isinstance(c, dict))
    return sum(values.values()) / len(values), total, values
