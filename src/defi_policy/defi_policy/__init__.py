"""defi_policy."""
