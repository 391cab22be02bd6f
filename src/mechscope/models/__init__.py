"""Models: loading and the architecture map (the only place that knows model families).

The submodules are imported where they are needed (``mechscope.models.families`` and
``mechscope.models.registry`` import no torch, so listing families and organisms stays fast).
"""
