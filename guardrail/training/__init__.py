"""Training the experts locally: preference pairs, SPE-DPO experts, the router, POROver (docs/training.md)."""
