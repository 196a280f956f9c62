"""Training: the DeepSpeed engine, the loop, the budget and its schedules, checkpoints, logging."""
