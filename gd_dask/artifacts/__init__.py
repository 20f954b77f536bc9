"""Artifacts: what a run leaves and reads back: model files, the registry, the
statistics cache, summaries and plots."""
