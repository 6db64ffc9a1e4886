"""Run folders: one format for source training and adaptation. The folder itself (config,
log, ``metrics.jsonl``, resume; :mod:`.run`), atomic checkpoint files (:mod:`.checkpoint`) and
models saved in them (:mod:`.model_io`)."""
