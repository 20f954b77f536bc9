"""Sizes that several layers must agree on, in one place.

``SLICE_ROWS``: rows per slice for passes that add up over rows (moments, metrics,
gradient sums). A slice of a few columns and its shifted or standardized copy stay in the
CPU cache; sums over rows are merged slice by slice in a fixed order (so the bits do not
depend on how rows arrive), and the certificates' error analysis counts on that length
(``optimization.certify.sums_accuracy``). Scratch buffers are sized for a slice.

``CHUNK_BYTES``: the most float64 bytes of rows one task adds up (the chunk), so the most
slices a task adds one after another. ``FAN_IN``: partial results merged per reduction
task of the fixed tree. With ``SLICE_ROWS`` they fix the longest chain of float64
additions behind any sum, which is what the certificates count.

``BATCH_ROWS``: rows decoded at a time within a row group larger than ``stream_above``
(pyarrow writes 1M-row groups by default, Spark 128 MB ones): 8,192, a quarter of a
slice, which gathers them (the same slices, the same bits). Decoding a whole slice at a
time took 2 × 300 MiB workers past distributed's 80 % pause (peak 250 MiB; the memory
bench's gram 2.7 → 4.5 s, stream 12.8 → 17.3 s).

``GROUP_BATCH_SLICES``: slices grouped at once by the categorical pass
(``runtime.executor.chunk_groups``): each group table is sorted, so fewer, larger tables
merge faster (8M rows × 250,000 level pairs: 9.0 s slice by slice, 5.4 s 16 at a time,
3.9 s 64 at a time, with slices of 8,192 rows: batches of 512K rows, which 16 slices make
now). A group's sum over a batch is one float64 run of up to that many slices' rows,
which the categorical certificate counts (``jobs.categorical``).
"""

#: 32,768 rather than 8,192 (issue 34): a slice's fixed costs (a few dozen NumPy calls, the
#: fold's merge) weighed a fifth of a Newton pass; the 8M-row Poisson job's passes went
#: from 0.44 to 0.31 s (a warm scan: 0.30 s) and its final pass from 0.73 to 0.50 s. A
#: slice of 10 columns (2.6 MB) still sits in the L3 cache; one slice's BLAS sums were off
#: by at most 10 u on 21 normal columns (``certify.ETA`` takes 128 u).
SLICE_ROWS = 32768
#: 128 MiB, Spark's maxPartitionBytes (``data.source``: fewer tasks left the 2-core bench
#: 10 % faster than 64 MiB).
CHUNK_BYTES = 128 * 2**20
FAN_IN = 8
BATCH_ROWS = 8192
GROUP_BATCH_SLICES = 16
