"""What the daemon counts of its own work, and serves to Prometheus: FUSE requests, store requests, the volumes' health."""
