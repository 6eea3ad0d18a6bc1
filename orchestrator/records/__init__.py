"""What a run leaves: history, progress, TensorBoard, reports, plots, results."""
