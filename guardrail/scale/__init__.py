"""Scale-out on Ray: replicas of the guarded server and evaluations sharded over actors (docs/scale.md)."""
