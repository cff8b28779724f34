"""Evaluation metrics (VOC detection AP, segmentation mIoU)."""
