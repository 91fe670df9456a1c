"""The gateway: colors each request by the rules and forwards it into its lane."""
