"""Shared fixtures: tests drive bae's real code paths through a scripted DSPy LM."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
