"""defi_perception."""
