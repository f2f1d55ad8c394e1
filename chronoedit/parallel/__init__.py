"""Multi-process inference: sequence parallel (Ulysses all-to-all, ring attention) and CFG parallel for the DiT,
applied from the outside to an unchanged model (see :mod:`chronoedit.parallel.apply`)."""

from chronoedit.parallel.config import ParallelConfig, check_parallel, launched_world_size

__all__ = ["ParallelConfig", "check_parallel", "launched_world_size"]
