"""Ray: start or join a cluster, placement, and the environment workers run in."""
