"""Run a long job's shards here or on Ray: the same shard functions, the same part files, the same output.

A long job (an encyclopedia bootstrap, ...) is cut into shards, each a pure function of (model, shard)
that writes its own part file atomically; a merge step checks the parts against the plan and assembles
the output. A `Runner` decides where the shards run: `LocalRunner` on the model already loaded in this
process, `mechscope.distributed.ray_runner.RayRunner` on Ray actors that each load the model once (one
per GPU, or per CPU slot). Ray is imported only by `ray_runner`, so the local path never needs it.

Examples:
    >>> import mechscope as ms
    >>> runner = make_runner("local", ModelSpec("toy"))
    >>> runner.call(lambda lm: lm.arch.n_layers)
    4
"""

from mechscope.distributed.parts import PartsFolder, parts_folder
from mechscope.distributed.runner import BACKENDS, LocalRunner, Runner, ShardTask, make_runner
from mechscope.distributed.spec import ModelSpec

__all__ = ["BACKENDS", "LocalRunner", "ModelSpec", "PartsFolder", "Runner", "ShardTask", "make_runner", "parts_folder"]
