"""The command line: run, validate, profile, tune, submit."""
