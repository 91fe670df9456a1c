"""The sidecar: keeps the lane of the inbound request for every outbound call of its app."""
