# Sourced by the journey scripts (gpu_session15.sh, gpu_session22.sh, gpu_session27.sh) with ROOT (the checkout) and TINY set: the
# journey's model (a 6 x 512 GPT-2 from scratch over the carried bench shards), its training settings (C) and its
# plan (REST: 8 articles, then the rest); --tiny shrinks the model to run on this CPU.
C="model.preset=scratch model.tokenizer=$ROOT/.bench/tokenizer data.shards=$ROOT/.bench/shards model.num_layers=6
   model.num_heads=8 model.hidden_dim=512 model.intermediate_dim=2048 model.max_sequence_length=512
   data.sequence_length=512 lora.enabled=false train.batch_size=8 train.checkpoint_every=25
   train.eval_batches=4 train.warmup_steps=10 train.learning_rate=3e-4"
[ -n "$TINY" ] && C="$C model.num_layers=1 model.hidden_dim=64 model.intermediate_dim=128 model.max_sequence_length=64
   data.sequence_length=64 train.max_steps=80"
REST='train.stages=[8,"rest"]'
