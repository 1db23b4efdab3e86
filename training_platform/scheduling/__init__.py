"""GPU-aware scheduling: inventory per host, device leases, the scheduling pass."""
