"""defi_sim."""
