"""A small stdlib HTML reader that returns a page's <title> and its text blocks in document order.

Both HTML sources align paragraphs across languages by something the reader keeps: LibreOffice help by each
block's ``id`` attribute, the Debian handbook by the position of each ``div.para``. Text goes to the
innermost open block, so nested blocks stay separate and the block sequence is the same in every language.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser

from bembed.data.records import clean

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Void elements that separate the words around them ("toolbar<br>and" is two words; <wbr> is not a space).
_BREAKS = {"br", "hr"}
_SKIP = {"script", "style", "pre", "noscript", "head"}

# (tag, attrs) -> a block key, or None when the element is not a block.
BlockRule = Callable[[str, dict], "str | None"]
# (tag, attrs) -> True when the element's text must be dropped.
SkipRule = Callable[[str, dict], bool]


class _Reader(HTMLParser):
    def __init__(self, is_block: BlockRule, skip: SkipRule):
        super().__init__(convert_charrefs=True)
        self.is_block, self.skip = is_block, skip
        self.stack: list[tuple[str, int | None, bool]] = []  # (tag, block index, skipping)
        self.blocks: list[tuple[str, list[str]]] = []
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in _BREAKS:
            self.handle_data(" ")
        if tag in _VOID:
            return
        attrs = {k: (v or "") for k, v in attrs}
        if tag == "title":
            self.in_title = True
        skipping = bool(self.stack and self.stack[-1][2]) or tag in _SKIP or self.skip(tag, attrs)
        key = None if skipping else self.is_block(tag, attrs)
        index = None
        if key is not None:
            index = len(self.blocks)
            self.blocks.append((key, []))
        self.stack.append((tag, index, skipping))

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        # Tolerate unclosed inner tags: pop up to the matching open tag, if there is one.
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
            return
        for tag, index, skipping in reversed(self.stack):
            if skipping:
                return
            if index is not None:
                self.blocks[index][1].append(data)
                return


def read_blocks(html: str, is_block: BlockRule, skip: SkipRule = lambda tag, attrs: False
                ) -> tuple[str, list[tuple[str, str]]]:
    """Return (title, [(key, text), ...]) with whitespace collapsed and empty blocks dropped."""
    reader = _Reader(is_block, skip)
    reader.feed(html)
    reader.close()
    blocks = [(key, clean("".join(parts))) for key, parts in reader.blocks]
    return clean("".join(reader.title)), [(k, t) for k, t in blocks if t]
