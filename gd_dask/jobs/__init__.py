"""Jobs: train, sweep, the nightly refit and its guard, predict and evaluate, and the job
prologue they share (``prepare``)."""
