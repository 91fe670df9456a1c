"""``lane rollout``: progressive delivery of a lane (Flagger's canary analysis, judged by lane).

The share of a lane's percentage coloring rule grows step by step (1, 5, 25, 50, 100 % of users,
sticky by user); each step is judged on the proxies' own metrics, the lane against the default
lane on the same traffic and across the whole chain of services, and a misbehaving lane is closed
again at once. Modules: `plan` (steps, where a rerun starts), `share_edit` (the config file, in
place and atomically), `gateways` and `admin_client` (lane's gateways and sidecars), `mesh_target`
(``--mesh``: the Istio coloring EnvoyFilter in a cluster) and `istio_source` (Istio's metrics),
`metrics_window`, `prometheus_source` and `analysis` (the figures and the verdict), `load`
(synthetic users), `record` and `timeline_svg` (what happened), `runner` (the loop), `cli`.

A layer above `lane` (like `loadtest` and `mesh_config`): it imports them, they never import it.
"""

from .analysis import Thresholds, Verdict, judge
from .plan import parse_steps, remaining_steps
from .runner import Options, rollout
from .share_edit import ShareRule, find_share_rule, with_share

__all__ = [
    "Options",
    "ShareRule",
    "Thresholds",
    "Verdict",
    "find_share_rule",
    "judge",
    "parse_steps",
    "remaining_steps",
    "rollout",
    "with_share",
]
