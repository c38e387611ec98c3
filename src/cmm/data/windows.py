"""Input windows as a view over the one scaled feature array, never a stacked copy.

A split's windows are ``(N, W, F)``, but neighbouring windows share ``W - 1`` of their ``W``
steps: stacked, a full day at 100 ms (140k training windows of 64 steps and 46 features) is
1.6 GB of float32 holding the same 10 MB of features 64 times. :class:`Windows` keeps the
``(n_steps, F)`` features of the whole dataset once and, per window, the row where it starts;
indexing cuts out just the windows asked for, so every stage reads batches through it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["Windows"]


class Windows:
    """``(N, W, F)`` float32 windows, array-like: ``len``, ``shape``, and indexing by an int, a
    slice, an integer or boolean array (optionally followed by indices of the step and feature
    axes) gives a contiguous copy of the windows selected, never of the others.

    ``features``: ``(n_steps, F)`` float32, all sessions back to back; ``starts``: ``(N,)`` row of
    each window's first step (a window never crosses a session: its rows are its session's).
    """

    def __init__(self, features: np.ndarray, starts: np.ndarray, window: int) -> None:
        self.features = features
        self.starts = np.asarray(starts, np.int64)
        self.window = int(window)
        if len(self.starts) and (self.starts.min() < 0
                                 or self.starts.max() + window > len(features)):
            raise ValueError("a window reaches outside the feature array")
        self._offsets = np.arange(self.window, dtype=np.int64)

    # -- array protocol --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.starts), self.window, self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.features.dtype

    ndim = 3

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        """Bytes this view holds itself (the start index; the features are shared)."""
        return self.starts.nbytes

    @property
    def copy_nbytes(self) -> int:
        """Bytes a stacked ``(N, W, F)`` copy of every window would take."""
        n, w, f = self.shape
        return n * w * f * self.features.itemsize

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            start = int(self.starts[key])
            out = self.features[start:start + self.window].copy()
            return out[rest] if rest else out
        rows = self.starts[key]
        out = self.features[rows[:, None] + self._offsets]  # (k, W, F), one gather
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The stacked copy, for callers that need every window at once (small splits)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive ``(<= size, W, F)`` blocks, in order."""
        for start in range(0, len(self), size):
            yield self[start:start + size]

    @classmethod
    def from_stacked(cls, x: np.ndarray) -> Windows:
        """Windows already stacked as ``(N, W, F)`` (in-memory datasets, tests) as a view: one
        window after the other in the feature array, so every consumer sees one type."""
        x = np.ascontiguousarray(x, np.float32)
        n, w, f = x.shape
        return cls(x.reshape(n * w, f), np.arange(n, dtype=np.int64) * w, w)

    def take(self, idx) -> Windows:
        """The windows at ``idx`` as another view (nothing copied)."""
        return Windows(self.features, self.starts[idx], self.window)

    def __repr__(self) -> str:
        n, w, f = self.shape
        return (f"Windows(n={n}, window={w}, features={f}, view of {self.features.nbytes / 2**20:.1f}"
                f" MiB instead of a {self.copy_nbytes / 2**20:.1f} MiB copy)")
