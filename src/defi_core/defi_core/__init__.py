"""defi_core."""
