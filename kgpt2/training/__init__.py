"""What the trainer (`kgpt2.train`) and the aligner (`kgpt2.align`) are made of.

Where a run stands (`cursor`, `continuation`), what it trains on (`training_data`), how (`optimizer`, `metrics`,
`devices`, `distribution`), what it keeps (`checkpoints`, with their manifest and arrays) and what it records
(`run_logs`, `run_plot`, `periodic_eval`, `progress_lines`); `preferences` and `preference_losses` are align's scores and losses.
"""
