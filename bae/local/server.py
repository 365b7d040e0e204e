"""``python -m bae.local.server``: llama-cpp-python's OpenAI-compatible server, safe on AMX CPUs.

The server loads its model with llama.cpp, as bae's embedded engine does, so on an Intel CPU with
AMX the repacked (extra buffer type) weights crash it the same way (see ``bae.local.model``).
``llama_cpp.server`` has no option to turn them off, so this launcher runs its ``main`` under the
engine's guard for the life of the process. Arguments are ``llama_cpp.server``'s own; without
``--model`` (and ``$MODEL``) it serves ``$BAE_LOCAL_MODEL`` or the bundled Gemma 3 270M::

    python -m bae.local.server --host 127.0.0.1 --port 8080 --model_alias gemma --n_ctx 4096
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    import llama_cpp
    from llama_cpp.server.__main__ import main as serve

    from bae.local.model import no_extra_buffer_types, resolve_model

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--model" or arg.startswith("--model=") for arg in args) and "MODEL" not in os.environ:
        args += ["--model", str(resolve_model(None)[0])]
    sys.argv = [sys.argv[0], *args]
    with no_extra_buffer_types(llama_cpp):
        serve()


if __name__ == "__main__":
    main()
