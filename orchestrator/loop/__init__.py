"""The run loop: run state, schedules, the clock, stopping, adaptive work, checkpoints."""
