"""The test suite; its layout mirrors the packages (tests/support holds the helpers, not tests)."""
