"""Hash-chained audit log keyed by the HSM audit key, and the alarm bus."""
