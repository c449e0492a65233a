"""Greedy continuation of a prompt by a Hugging Face GPT-2 folder (e.g. `kgpt2 export --to hf`), in transformers.

The independent side of a check: `kgpt2 generate --sampler greedy` on the run should print the same text.

    python benchmarks/hf_greedy.py EXPORTED_DIR "The patients were" 24
"""
import sys

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel


def main(folder: str, prompt: str, new_tokens: int) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).to(device).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.eos_token_id)
    print(f"transformers {device}: {tokenizer.decode(out[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
