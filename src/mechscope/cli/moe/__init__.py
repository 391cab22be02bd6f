"""``mechscope moe ...``: how a mixture-of-experts model routes, what its experts do, and changing them.

`basics` defines the app and its first commands (info, trace, heatmap, utilization); the other modules add
theirs through ``register(app)``, in the order ``mechscope moe --help`` lists them: what experts specialise in
(`corpus`: specialization, context), routes through the layers (`paths`: pipeline, coactivation, predict),
interventions on the routing (`interventions`: ablate, route, compare) and the experts' weights (`experts`:
vocab; `compression`: compression).
"""

from __future__ import annotations

from mechscope.cli.moe import compression, corpus, experts, interventions, paths
from mechscope.cli.moe.basics import DEFAULT_MODEL, app

corpus.register(app)
paths.register(app)
interventions.register(app)
experts.register(app)
compression.register(app)

__all__ = ["DEFAULT_MODEL", "app"]
