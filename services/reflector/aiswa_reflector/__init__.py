"""The reflector: a worker that computes code metrics of analysis runs."""
