"""The participants on the cluster: lifecycle and tasks, placement, pre-flight, device traces."""
