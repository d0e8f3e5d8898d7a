"""Language codes the preprocessor accepts: ISO 639-1 plus the codes of XLM-100 that are not in it."""

from __future__ import annotations

ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz
    ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is
    it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt
    my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm
    sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh
    zu""".split()
)
# XLM-100 (the original README's list) uses these codes outside ISO 639-1.
XLM100_EXTRA = frozenset("als arz ast bar ceb hsb mzn nds new pms scn war zh_classical zh_min_nan simple".split())
KNOWN_LANGUAGES = ISO_639_1 | XLM100_EXTRA


def check_language(lang: str, source: str) -> None:
    """Raise ValueError naming `source` when `lang` is not a known language code."""
    if lang not in KNOWN_LANGUAGES:
        raise ValueError(
            f"{source}: unknown language code {lang!r} (expected an ISO 639-1 code such as 'en', 'fr', 'zh', "
            "or an XLM-100 code; see xlmtrain/data/languages.py)"
        )
