"""The question `verify` asks a server, and the answer it checks: a sum a model cannot get
right by chance. The tiny test checkpoints (turbo/tiny_model.py) learn the same pair, so
`invoke verify` passes against a real vLLM serving one."""

QUESTION = "What is 17 + 25? Reply with the number only."
EXPECTED = "42"
