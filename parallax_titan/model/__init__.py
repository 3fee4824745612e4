"""The Qwen3-Parallax model: args.py (its arguments), model.py (the decoder), attention/ (the attention types,
one module each, in a registry), flavors.py (named sizes and the paper's controls), flops.py (parameter and
FLOP arithmetic), checkpoint.py (DCP weights outside the trainer), state_dict_adapter.py (the Hugging Face names),
tokenizer_check.py."""
