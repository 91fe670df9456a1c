"""`lane graph`: the lanes requests really took, from the proxies' metrics, as SVG, DOT or JSON."""
