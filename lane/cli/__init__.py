"""The `lane` command line."""
