"""The server side of a run: the global state, evaluation, server-side models, privacy hooks, the preprocessing fit."""
