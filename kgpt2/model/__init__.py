"""The model and its tokenizer: what is trained, before any training.

`models` is the factory (preset names, kaggle:// and hf:// handles, preset and Hugging Face folders, a shape from
scratch); `tokenizer` and `char_tokenizer` encode text; `adapters`, `peft_adapters` and `quantize` are LoRA and its
quantised base; `memory` estimates what a config needs on the GPU.
"""
