"""Local training in PyTorch: the local model, training loops, batched training, DP-SGD, distillation, parameters on the wire, the model registry, tasks."""
