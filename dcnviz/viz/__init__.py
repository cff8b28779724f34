"""Rendering structured results as pictures (the visualizer side of the predictor/visualizer split)."""
