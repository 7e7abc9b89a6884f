"""A pool of large output buffers, so allocating calls skip fresh pages.

A new large NumPy array gets fresh pages from the kernel, which faults them
in and zeroes them: for a 64 MB output that costs more than the
normalization itself.  Like ONNX Runtime's arena and PyTorch's caching
allocator, we keep freed large blocks and hand them out again.

The blocks come from a NumPy memory handler (NEP 49) that is made current
only while ``empty`` allocates one of our outputs; NumPy frees every array
through the handler it was made with, so our blocks come back here and no
other array is touched.  Blocks of at least ``MIN_POOLED_BYTES`` are kept, up
to ``SLOTS`` blocks and ``LAYERNORM_BUFFER_POOL_MB`` (default 512, 0 turns
the pool off) megabytes in all; a block is reused for a request of exactly
its size.  New blocks start on a 64-byte cache line, which lets the kernels
stream (non-temporal stores) large outputs.
"""
import os

import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_acquire_lock,
                               PyThread_release_lock, WAIT_LOCK)
from libc.stdlib cimport malloc, calloc, realloc, free

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)
from libc.string cimport memset, strncpy

cnp.import_array()

cdef extern from "numpy/ndarraytypes.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        unsigned char version
        PyDataMemAllocator allocator

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Ask for transparent huge pages, as NumPy does for its own arrays of
     * 4 MB and more (THP in "madvise" mode gives them to no one else). */
    static void ln_advise_huge_pages(void *block, size_t size)
    {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        madvise(block, size, MADV_HUGEPAGE);
    #else
        (void)block; (void)size;
    #endif
    }
    """
    void ln_advise_huge_pages(void *block, size_t size) nogil

DEF SLOTS = 8
# blocks of at least this size start on a huge page and are advised to use
# huge pages: with 4 KB pages a (16384, 1024) float32 layer_norm writing a
# pooled output took 1.05x-1.27x the time of one writing a NumPy array
DEF HUGE_PAGE_MIN_BYTES = 4 << 20
DEF HUGE_PAGE_BYTES = 2 << 20
# glibc maps blocks from its mmap threshold up (128 KB until a freed mapped
# block raises it to that block's size, when a block of the same size is
# mapped again) and trims the heap top: an output of that size can come back
# as fresh pages on every call.  add_layer_norm on (16, 64, 56) float64 over
# axis 1, 448 KB outputs: 303 us a call with a 1 MB minimum, 34 us with this
# one (the kernel ~20 us); other outputs of 144 KB to 900 KB 0.91x to 1.06x
# (A/B in one process, 2 threads)
MIN_POOLED_BYTES = 128 << 10

cdef struct Pool:
    void *block[SLOTS]
    size_t size[SLOTS]
    size_t cached_bytes
    size_t limit_bytes
    size_t min_bytes
    int next_eviction
    PyThread_type_lock lock

cdef Pool pool
cdef PyDataMem_Handler handler


cdef void *pool_malloc(void *ctx, size_t size) noexcept nogil:
    cdef Pool *p = <Pool *>ctx
    cdef void *block = NULL
    cdef int i
    if size >= p.min_bytes:
        PyThread_acquire_lock(p.lock, WAIT_LOCK)
        for i in range(SLOTS):
            if p.block[i] != NULL and p.size[i] == size:
                block = p.block[i]
                p.block[i] = NULL
                p.cached_bytes -= size
                break
        PyThread_release_lock(p.lock)
        if block != NULL:
            return block
        # on a cache line: the kernels stream (non-temporal stores) large
        # outputs only when their vectors are aligned
        if size >= HUGE_PAGE_MIN_BYTES:
            if posix_memalign(&block, HUGE_PAGE_BYTES, size) != 0:
                return NULL
            ln_advise_huge_pages(block, size)
            return block
        if posix_memalign(&block, 64, size) != 0:
            return NULL
        return block
    return malloc(size if size else 1)


cdef void *pool_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef size_t size = nelem * elsize
    cdef void *block
    if elsize and size // elsize != nelem:
        return NULL
    if size >= (<Pool *>ctx).min_bytes:
        block = pool_malloc(ctx, size)
        if block != NULL:
            memset(block, 0, size)
        return block
    return calloc(nelem if nelem else 1, elsize if elsize else 1)


cdef void *pool_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return realloc(ptr, new_size if new_size else 1)


cdef void pool_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    cdef Pool *p = <Pool *>ctx
    cdef int i, slot = -1
    if ptr == NULL:
        return
    if size < p.min_bytes or size > p.limit_bytes or <size_t>ptr % 64 != 0:   # (realloc'd blocks may be unaligned)
        free(ptr)
        return
    PyThread_acquire_lock(p.lock, WAIT_LOCK)
    # evict in round-robin order until the block fits in a slot and the budget
    while True:
        for i in range(SLOTS):
            if p.block[i] == NULL:
                slot = i
                break
        if slot >= 0 and p.cached_bytes + size <= p.limit_bytes:
            break
        i = p.next_eviction
        p.next_eviction = (p.next_eviction + 1) % SLOTS
        if p.block[i] != NULL:
            free(p.block[i])
            p.cached_bytes -= p.size[i]
            p.block[i] = NULL
        slot = -1
    p.block[slot] = ptr
    p.size[slot] = size
    p.cached_bytes += size
    PyThread_release_lock(p.lock)


cdef object make_handler():
    strncpy(handler.name, b"layernorm_buffer_pool", 127)
    handler.version = 1
    handler.allocator.ctx = &pool
    handler.allocator.malloc = pool_malloc
    handler.allocator.calloc = pool_calloc
    handler.allocator.realloc = pool_realloc
    handler.allocator.free = pool_free
    return PyCapsule_New(&handler, "mem_handler", NULL)


def _limit_from_environment():
    value = os.environ.get("LAYERNORM_BUFFER_POOL_MB", "512")
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = 512.0
    return max(0, int(megabytes * (1 << 20)))


pool.lock = PyThread_allocate_lock()
pool.limit_bytes = _limit_from_environment()
pool.min_bytes = MIN_POOLED_BYTES
_handler_capsule = make_handler()


def empty(shape, dtype):
    """numpy.empty, from the pool when the array is large."""
    dtype = np.dtype(dtype)
    cdef Py_ssize_t nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes < MIN_POOLED_BYTES or pool.limit_bytes == 0:
        return np.empty(shape, dtype)
    previous = PyDataMem_SetHandler(_handler_capsule)
    try:
        return np.empty(shape, dtype)
    finally:
        PyDataMem_SetHandler(previous)


def empty_like(array):
    """An uninitialized C-contiguous array of `array`'s shape and dtype."""
    return empty(array.shape, array.dtype)


def cached_bytes():
    """Bytes held by the pool right now."""
    return pool.cached_bytes
