"""The data plane both proxies share: runtime and reload, registry, health, dispatch with fallback
and retry, answers, forwarding and relaying, upgrades (WebSocket, CONNECT), explain."""
