"""Searching: study specs, search spaces, Ray Tune and Optuna wiring, the command line."""
