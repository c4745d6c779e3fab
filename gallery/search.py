"""Search over prompts in Chinese, English and both (../shared/DESIGN.md, Search).

PostgreSQL's parsers don't segment Chinese, so the studio builds its own
tsvector: Latin text goes through the `english` configuration (stemmed), and
each run of Chinese characters becomes lexemes of single characters, character
pairs and jieba's search-mode words, taken verbatim with array_to_tsvector. A
query is cut the same way: a Chinese word matches through its character pairs,
so 草地 finds 一只小猫在草地上奔跑 whatever jieba makes of the sentence.
"""

import html
import operator
import re
from dataclasses import dataclass
from functools import reduce

import jieba
from django.contrib.postgres.search import SearchQuery
from django.db.models.expressions import RawSQL
from django.utils.safestring import SafeString, mark_safe

jieba.setLogLevel(60)

CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
LATIN_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_QUERY_TERMS = 12


def cjk_runs(text: str) -> list[str]:
    return CJK_RUN.findall(text)


def latin_text(text: str) -> str:
    return CJK_RUN.sub(" ", text)


def cjk_lexemes(text: str) -> list[str]:
    """Characters, character pairs and jieba words of every Chinese run in text."""
    lexemes: set[str] = set()
    for run in cjk_runs(text):
        lexemes.update(run)
        lexemes.update(run[i:i + 2] for i in range(len(run) - 1))
        lexemes.update(word for word in jieba.cut_for_search(run) if len(word) > 2)
    return sorted(lexemes)


def document_sql(prompt: tuple[str, str], revised: tuple[str, str], negative: tuple[str, str]) -> str:
    """The tsvector expression over (Latin text, Chinese lexemes) SQL pairs: prompt A, revised B, negative C."""
    return " || ".join(
        f"setweight(to_tsvector('english', {latin}), '{weight}')"
        f" || setweight(array_to_tsvector({cjk}), '{weight}')"
        for (latin, cjk), weight in ((prompt, "A"), (revised, "B"), (negative, "C"))
    )


def document(prompt: str, revised_prompt: str, negative_prompt: str) -> RawSQL:
    """The tsvector of an image, to store in Image.search."""
    placeholders = ("%s", "%s::text[]")
    params = []
    for text in (prompt, revised_prompt, negative_prompt):
        params += [latin_text(text), cjk_lexemes(text)]
    return RawSQL(document_sql(placeholders, placeholders, placeholders), params)


@dataclass(frozen=True)
class Query:
    text: str
    latin: str
    cjk_terms: tuple[str, ...]  # each a run of Chinese characters the results must contain

    @property
    def is_empty(self) -> bool:
        return not self.latin.strip() and not self.cjk_terms

    def tsquery(self) -> SearchQuery:
        """All terms must match: English words by stem, Chinese runs by all their character pairs."""
        parts = []
        if LATIN_WORD.search(self.latin):
            parts.append(SearchQuery(self.latin, config="english", search_type="plain"))
        if self.cjk_terms:
            cjk = " & ".join(_cjk_term(term) for term in self.cjk_terms)
            parts.append(SearchQuery(cjk, config="simple", search_type="raw"))
        return reduce(operator.and_, parts)

    def rank_tsquery(self) -> SearchQuery:
        """The match query, or-ed with jieba's words, so that a whole word outranks scattered pairs."""
        words = sorted({word for term in self.cjk_terms for word in jieba.cut_for_search(term) if len(word) > 1})
        if not words:
            return self.tsquery()
        return self.tsquery() | SearchQuery(" | ".join(f"'{word}'" for word in words), config="simple",
                                            search_type="raw")

    def highlight(self, text: str) -> SafeString:
        """text, escaped, with the words this query matched wrapped in <mark>."""
        patterns = [re.escape(term) for term in self.cjk_terms]
        patterns += [rf"\b{re.escape(_stem(word))}\w*" for word in LATIN_WORD.findall(self.latin)
                     if len(word) > 1]
        if not patterns:
            return mark_safe(html.escape(text))
        matcher = re.compile("|".join(sorted(patterns, key=len, reverse=True)), re.IGNORECASE)
        pieces, last = [], 0
        for match in matcher.finditer(text):
            pieces.append(html.escape(text[last:match.start()]))
            pieces.append(f"<mark>{html.escape(match.group())}</mark>")
            last = match.end()
        pieces.append(html.escape(text[last:]))
        return mark_safe("".join(pieces))


def parse(text: str) -> Query:
    text = (text or "").strip()[:200]
    terms = tuple(dict.fromkeys(cjk_runs(text)))[:MAX_QUERY_TERMS]
    latin = " ".join(LATIN_WORD.findall(latin_text(text))[:MAX_QUERY_TERMS])
    return Query(text, latin, terms)


def _cjk_term(term: str) -> str:
    if len(term) == 1:
        return f"'{term}'"
    return "(" + " & ".join(f"'{term[i:i + 2]}'" for i in range(len(term) - 1)) + ")"


def _stem(word: str) -> str:
    """A rough English stem for highlighting (the database's stemmer decides what matches)."""
    word = word.lower()
    for suffix in ("ies", "es", "s", "ing", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word
