"""The embedded model: llama.cpp behind a DSPy LM, so bae compiles and runs with no API key.

``engine`` loads the GGUF model (one instance per file, shared) and serves DSPy's requests;
``decoding`` turns messages into a prompt a base model follows and scores closed answers.
"""
