"""mesh_config: the Istio side of lane -- VirtualServices, DestinationRules, a Gateway and the
EnvoyFilters whose Lua mirrors the Python coloring engine, rendered from the same lane config.

`render_objects` / `dump_yaml` are the stable entry points (`lane mesh render`); validation
against CRD schemas is in `mesh_config.validate`, the real-Envoy proof in `mesh_config.verify`.
"""

from .render import dump_yaml, render_objects, render_resources

__all__ = ["dump_yaml", "render_objects", "render_resources"]
