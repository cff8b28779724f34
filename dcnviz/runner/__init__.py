"""Dataset-scale runs: DataLoader workers, torchrun processes, resumable partial state, progress
(:func:`run`; see :mod:`dcnviz.runner.loop`)."""
from dcnviz.runner.distributed import Dist
from dcnviz.runner.loop import Job, Outcome, default_workers, run
from dcnviz.runner.partial import PartialState

__all__ = ["Dist", "Job", "Outcome", "PartialState", "default_workers", "run"]
