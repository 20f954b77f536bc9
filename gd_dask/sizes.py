"""Sizes that several layers must agree on, in one place.

``SLICE_ROWS``: rows per slice for passes that add up over rows (moments, metrics,
gradient sums). A slice of a few columns and its shifted or standardized copy stay in the
CPU cache; sums over rows are merged slice by slice in a fixed order (so the bits do not
depend on how rows arrive), and the certificates' error analysis counts on that length
(``optimization.certify.sums_accuracy``). Scratch buffers are sized for a slice.

``BATCH_ROWS``: rows decoded at a time within a row group larger than ``stream_above``
(pyarrow writes 1M-row groups by default, Spark 128 MB ones): one slice.
"""

SLICE_ROWS = 8192
BATCH_ROWS = SLICE_ROWS
