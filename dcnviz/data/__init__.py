"""Datasets: the VOC-layout reader/writer, the synthetic scene generator and the training loader."""
