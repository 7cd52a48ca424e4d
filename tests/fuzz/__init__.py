"""Fuzzing: targets, harness and regression corpus (docs/fuzzing.md)."""
