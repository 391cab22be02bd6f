"""``mechscope moe ...``: how a mixture-of-experts model routes, what its experts do, and changing them.

`basics` defines the app and its first commands (info, trace, utilization); the other modules add theirs
through ``register(app)``, in the order ``mechscope moe --help`` lists them: corpus statistics
(`corpus`: specialization, context, pipeline, coactivation, predict), interventions on the routing
(`interventions`: ablate, route, compare) and the experts' weights (`experts`: vocab, compression).
"""

from __future__ import annotations

from mechscope.cli.moe import corpus, experts, interventions
from mechscope.cli.moe.basics import DEFAULT_MODEL, app

corpus.register(app)
interventions.register(app)
experts.register(app)

__all__ = ["DEFAULT_MODEL", "app"]
