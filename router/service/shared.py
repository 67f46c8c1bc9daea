"""Arrays in memory shared with forked workers (an anonymous MAP_SHARED mapping).

Made before the fork; workers write their own rows, the supervisor reads them. Counting
costs one array increment and no message.
"""

from __future__ import annotations

import math
import mmap

import numpy as np


def shared_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """int64 zeros of ``shape`` that forked children share with this process."""
    count = math.prod(shape)
    mapping = mmap.mmap(-1, max(count * 8, 8), flags=mmap.MAP_SHARED)
    return np.frombuffer(mapping, dtype=np.int64, count=count).reshape(shape)
