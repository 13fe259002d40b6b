"""defi_training."""
