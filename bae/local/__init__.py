"""The embedded model: llama.cpp behind a DSPy LM, so bae compiles and runs with no API key.

``model`` finds and loads the GGUF weights (one instance per file, shared, closed at exit); ``engine``
serves DSPy's requests with it; ``decoding`` turns messages into a prompt a base model follows and
scores closed answers; ``grammar`` decodes open answers as JSON; ``server`` serves the model over HTTP.
"""
