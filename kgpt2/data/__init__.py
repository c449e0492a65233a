"""Source -> shards -> stage plan: every corpus becomes token shards, and a plan says which articles each stage takes.

`sources` reads any format into documents, `shards` writes and opens shard sets (`kgpt2 prepare`), `batches`
cuts next-token windows from them, and `stage_plan` splits the training articles into stages.
"""
