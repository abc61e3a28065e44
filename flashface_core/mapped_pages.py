"""Give a memory-mapped checkpoint's pages back once its tensors have been converted to another dtype.

torch.load(mmap=True) maps the whole file; converting tensor by tensor would otherwise keep every
source page resident until the last tensor is done, so loading the official fp32 file as fp16 would
briefly need both (about 10 GB). The pages are clean file pages: dropping them from this process
(madvise DONTNEED) loses nothing, a later read of the same bytes fetches them from the file again.
"""

import ctypes
import ctypes.util
import mmap
import sys

_MADV_DONTNEED = 4  # Linux
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def release_mapped_pages(tensor):
    """Drop the whole pages under a CPU tensor that lives in a read-only file mapping (no-op elsewhere)."""
    if _libc is None or tensor.device.type != "cpu":
        return
    start = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
    end = start + tensor.numel() * tensor.element_size()
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # only pages that hold nothing but this tensor
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
