"""HostCopies: each batch's activations brought to the host in the storage dtype, while the next
batch runs.

On CUDA a batch is cast on the device, then copied with ``non_blocking`` copies on a side stream
into pinned host buffers, so the copies overlap the next batch's forward pass instead of stalling
it; an event recorded after the copies is what the reader (the disk writer) waits on before it
touches the buffers. On the CPU the same path runs without pinning, streams or events: a cast
goes into a reused buffer, and values already in the storage dtype are handed over as they are
(the forward pass's own tensors, which nothing else holds), so they are never copied.

Buffers come from a pool of ``slots`` batches and return to it once written: pinned memory is
allocated once per run rather than per batch, and a CPU cast does not fault in fresh pages for
every batch.
"""

from __future__ import annotations

import queue

import torch

__all__ = ["HostBatch", "HostCopies"]


class HostBatch:
    """One batch on the host: ``host[site]`` ``[batch, pos, width]`` in the storage dtype.

    Read ``host`` only after :meth:`wait`; call :meth:`release` once nothing reads it any more
    (the buffers then serve a later batch).
    """

    def __init__(self, host: dict[str, torch.Tensor], event=None, slot=None, pool=None):
        self.host, self._event, self._slot, self._pool = host, event, slot, pool

    def wait(self) -> None:
        """Block until the copies into ``host`` are done (a no-op on the CPU)."""
        if self._event is not None:
            self._event.synchronize()

    def release(self) -> None:
        """Give the buffers back to the pool (a no-op for values handed over uncopied)."""
        if self._slot is not None:
            self._pool.put(self._slot)
            self._slot = None


class HostCopies:
    """Stages batches ``{site: [batch, pos, width]}`` on the host as :class:`HostBatch` es.

    Args:
        widths: site -> width of every site a batch holds.
        dtype: storage dtype of the host copies.
        device: where the model runs; ``cuda`` pins the buffers and copies asynchronously.
        batch_size: most windows in one batch.
        seq_len: positions per window.
        slots: batches whose buffers may be in use at once; :meth:`stage` waits for a
            :meth:`HostBatch.release` when all are taken.
    """

    def __init__(self, widths, dtype, device, batch_size: int, seq_len: int, slots: int):
        self.widths, self.dtype, self.device = dict(widths), dtype, torch.device(device)
        self.shape, self.slots = (batch_size, seq_len), max(1, slots)
        self.pinned = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.pinned else None
        self._pool: queue.Queue[dict[str, torch.Tensor]] = queue.Queue()
        self._made = 0

    def stage(self, acts: dict[str, torch.Tensor]) -> HostBatch:
        """Start bringing ``acts`` (``{site: [batch, pos, width]}``) to the host; the result's
        ``host`` is valid after its ``wait()``."""
        first = next(iter(acts.values()))
        if first.device.type == "cpu" and all(a.dtype == self.dtype for a in acts.values()):
            return HostBatch({s: a.contiguous() for s, a in acts.items()})
        slot = self._take()
        host = {s: slot[s][: a.shape[0]] for s, a in acts.items()}
        if self.stream is None:
            for s, a in acts.items():
                host[s].copy_(a)  # the cast, into a reused buffer
            return HostBatch(host, None, slot, self._pool)
        # The side stream must not read the activations before the forward pass wrote them.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for s, a in acts.items():
                # Cast on the device: a copy between equal dtypes is the one that stays
                # asynchronous, and a downcast halves the bytes that cross the bus.
                host[s].copy_(a.to(self.dtype), non_blocking=True)
                a.record_stream(self.stream)  # keep its memory from reuse until copied
            event = torch.cuda.Event()
            event.record(self.stream)
        return HostBatch(host, event, slot, self._pool)

    def _take(self) -> dict[str, torch.Tensor]:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        if self._made < self.slots:  # allocated on first need: the uncopied path needs none
            self._made += 1
            return {
                s: torch.empty((*self.shape, w), dtype=self.dtype, pin_memory=self.pinned)
                for s, w in self.widths.items()
            }
        return self._pool.get()  # all in use: wait for the writer to release one
