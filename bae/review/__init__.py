"""``bae review``'s logic: production runs in, gold traces out, least confident first.

Kept apart from the terminal app (``bae_cli.review_app``, a thin Textual layer that draws a session and
turns keys into its methods), so every rule is tested without a terminal:

* ``files``: the inputs (record files, ``bae eval --output`` files), checked line by line against the
  graph with the dataset loader, and the gold file, appended whole after each decision;
* ``items``: an input and its answers (the recorded one, gold, each version's, a teacher's), compared on
  what an LM made in them;
* ``draft``: the trace on screen as the person changes it, everything offered read from the graph's types;
* ``session``: the queue in order, accept / skip / undo / auto-accept, and each reviewed line's provenance;
* ``teacher``: another version or a stronger model answering each input (``--suggest``).
"""

from bae.review.draft import MISSING, ROUTE_END, Draft, ReviewError, Slot
from bae.review.files import GoldFile, read_inputs
from bae.review.items import Answer, ReviewItem, agree, input_key
from bae.review.session import ORDERS, ReviewSession, changes, ordered, reviewed_line
from bae.review.teacher import Teacher, open_teacher

__all__ = [
    "MISSING", "ORDERS", "ROUTE_END", "Answer", "Draft", "GoldFile", "ReviewError", "ReviewItem", "ReviewSession",
    "Slot", "Teacher", "agree", "changes", "input_key", "open_teacher", "ordered", "read_inputs", "reviewed_line",
]  # fmt: skip
