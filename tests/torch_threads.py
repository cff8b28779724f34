"""torch's intra-op thread count for a block, restored after it, so that no test leaves its count to the
tests after it."""
import contextlib

import torch


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
