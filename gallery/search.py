"""Search over prompts in Chinese, English and both (../shared/DESIGN.md, Search).

PostgreSQL's parsers don't segment Chinese, so the studio builds its own
tsvector: Latin text goes through the `english` configuration (stemmed), and
each run of Chinese characters becomes lexemes of single characters, character
pairs and jieba's search-mode words, each at the character where it starts, so
that weights and nearness count for Chinese as they do for English. A query is
cut the same way: a Chinese word matches through its character pairs, so 草地
finds 一只小猫在草地上奔跑 whatever jieba makes of the sentence.

The prompt is weighted A, the provider's revised prompt B and the negative
prompt C; "Most relevant" ranks every match by where its terms are (Tier).
"""

import functools
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import jieba
from django.db import connection
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


# tsvector keeps positions up to 16383, and at most 256 of them per lexeme.
MAX_POSITION = 16383
MAX_POSITIONS = 256


@functools.lru_cache(maxsize=8192)
def _run_lexemes(run: str) -> tuple[tuple[str, int], ...]:
    """(lexeme, offset in run) for each character, pair and longer jieba word of a Chinese run."""
    found = [(char, offset) for offset, char in enumerate(run)]
    found += [(run[offset:offset + 2], offset) for offset in range(len(run) - 1)]
    found += [(word, start) for word, start, _ in jieba.tokenize(run, mode="search") if len(word) > 2]
    return tuple(found)


def cjk_positions(text: str) -> dict[str, list[int]]:
    """Every Chinese lexeme of text with the 1-based character positions where it starts."""
    positions: dict[str, list[int]] = {}
    for match in CJK_RUN.finditer(text):
        for lexeme, offset in _run_lexemes(match.group()):
            positions.setdefault(lexeme, []).append(min(match.start() + offset + 1, MAX_POSITION))
    return positions


def cjk_vector(text: str) -> str:
    """cjk_positions in tsvector's text form ('草地':6 '草':6,9 ...), to cast with ::tsvector. Chinese
    characters need no quoting inside the quotes."""
    return " ".join(f"'{lexeme}':{','.join(map(str, sorted(set(places))[:MAX_POSITIONS]))}"
                    for lexeme, places in sorted(cjk_positions(text).items()))


def document_sql(prompt: tuple[str, str], revised: tuple[str, str], negative: tuple[str, str]) -> str:
    """The tsvector expression over (Latin text, cjk_vector text) SQL pairs: prompt A, revised B, negative C.
    English comes as stems and as pairs of stems side by side (studio_bigrams, migration 0006)."""
    return " || ".join(
        f"setweight(to_tsvector('english', {latin}), '{weight}')"
        f" || setweight(studio_bigrams(to_tsvector('english', {latin})), '{weight}')"
        f" || setweight(({cjk})::tsvector, '{weight}')"
        for (latin, cjk), weight in ((prompt, "A"), (revised, "B"), (negative, "C"))
    )


def document(prompt: str, revised_prompt: str, negative_prompt: str) -> RawSQL:
    """The tsvector of an image, to store in Image.search."""
    placeholders = ("%s", "%s")
    params = []
    for text in (prompt, revised_prompt, negative_prompt):
        params += [latin_text(text)] * 2 + [cjk_vector(text)]  # the Latin text goes in twice
    return RawSQL(document_sql(placeholders, placeholders, placeholders), params)


@dataclass(frozen=True)
class Query:
    text: str
    latin: str
    cjk_terms: tuple[str, ...]  # each a run of Chinese characters the results must contain

    @property
    def is_empty(self) -> bool:
        return not self.latin.strip() and not self.cjk_terms

    def tiers(self) -> list["Tier"]:
        """The kinds of match, best first: by where the terms are (see FIELDS), and within that English
        words as the phrase typed and Chinese terms as whole words before scattered words and pairs."""
        phrase = len(LATIN_WORD.findall(self.latin)) > 1 or any(self._words(term) for term in self.cjk_terms)
        kinds = (True, False) if phrase else (False,)
        return [Tier(self, weights, words) for weights in FIELDS for words in kinds]

    def anywhere(self) -> "Tier":
        """What a match is: every term, anywhere in the vector, English words by stem and Chinese runs by
        all their character pairs. The last of the tiers."""
        return Tier(self, None, False)

    def tsquery_sql(self, words: bool = False) -> tuple[str, list]:
        """The tsquery of every term as SQL and its parameters; with `words`, the English words as a phrase,
        and each Chinese term's longer jieba words (whole words in the studio's vectors) there too."""
        parts, params = [], []
        if LATIN_WORD.search(self.latin):
            parts.append("plainto_tsquery('english'::regconfig, %s)")
            params.append(self.latin)
        if words and len(LATIN_WORD.findall(self.latin)) > 1:
            parts.append("%s::tsquery")  # NULL, matching nothing, when no two are side by side
            params.append(english_phrase(self.latin))
        if self.cjk_terms:
            terms = [" & ".join([_cjk_term(term), *(f"'{word}'" for word in self._words(term))]) if words
                     else _cjk_term(term) for term in self.cjk_terms]
            parts.append("to_tsquery('simple'::regconfig, %s)")
            params.append(" & ".join(f"({term})" for term in terms))
        return " && ".join(parts), params

    @staticmethod
    def _words(term: str) -> list[str]:
        return [word for word in jieba.cut(term) if len(word) > 2]

    def highlighter(self) -> Callable[[str], SafeString]:
        """A function of a text: the text, escaped, with the words this query matched wrapped in <mark>. The
        pattern of the words is made once, for a page of texts."""
        patterns = [re.escape(term) for term in self.cjk_terms]
        patterns += [rf"\b{re.escape(_stem(word))}\w*" for word in LATIN_WORD.findall(self.latin)
                     if len(word) > 1]
        if not patterns:
            return lambda text: mark_safe(html.escape(text or ""))
        matcher = re.compile("|".join(sorted(patterns, key=len, reverse=True)), re.IGNORECASE)

        def highlight(text: str) -> SafeString:
            text, pieces, last = text or "", [], 0
            for match in matcher.finditer(text):
                pieces.append(html.escape(text[last:match.start()]))
                pieces.append(f"<mark>{html.escape(match.group())}</mark>")
                last = match.end()
            pieces.append(html.escape(text[last:]))
            return mark_safe("".join(pieces))

        return highlight


# Where a match counts most, best first: the prompt (weight A), the prompt or the revised prompt
# (A and B), anywhere (the negative prompt too). Each has a GIN index of its own (gallery.models).
FIELDS = ("{a}", "{a,b}", None)


@dataclass(frozen=True)
class Tier:
    """One kind of match of a query: its terms all within `weights` (every weight when None), as whole
    Chinese words or not."""

    query: Query
    weights: str | None
    words: bool

    def sql(self, column: str) -> tuple[str, list]:
        """The condition that a row's search vector in `column` matches this way, and its parameters."""
        vector = f"ts_filter({column}, '{self.weights}')" if self.weights else column
        tsquery, params = self.query.tsquery_sql(self.words)
        return f"{vector} @@ ({tsquery})", params


def parse(text: str) -> Query:
    text = (text or "").strip()[:200]
    terms = tuple(dict.fromkeys(cjk_runs(text)))[:MAX_QUERY_TERMS]
    latin = " ".join(LATIN_WORD.findall(latin_text(text))[:MAX_QUERY_TERMS])
    return Query(text, latin, terms)


@functools.lru_cache(maxsize=4096)
def english_phrase(latin: str) -> str | None:
    """studio_phrase(latin) (migration 0006): the tsquery of every two English stems side by side in latin, as
    text; None when no two are. Asked for once per text: PostgreSQL would run it while planning each statement
    that holds it instead, half a millisecond each time, and a search by relevance holds it in three tiers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT studio_phrase(%s)::text", [latin])
        return cursor.fetchone()[0]


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
