"""What the provider changed when it revised a prompt, for marking side by side."""

import re
from difflib import SequenceMatcher

# Chinese characters one by one, Latin words whole, and whatever lies between.
TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+|\s+|[^\w\s]|_", re.UNICODE)


def prompt_diff(prompt: str, revised: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Two lists of (kind, text): the prompt with "removed" runs, the revision with "added" runs."""
    before, after = TOKEN.findall(prompt), TOKEN.findall(revised)
    left, right = [], []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if op == "equal":
            left.append(("same", "".join(before[i1:i2])))
            right.append(("same", "".join(after[j1:j2])))
            continue
        if i2 > i1:
            left.append(("removed", "".join(before[i1:i2])))
        if j2 > j1:
            right.append(("added", "".join(after[j1:j2])))
    return left, right
