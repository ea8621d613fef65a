"""IFEval-style instruction following: every verifiable instruction of the benchmark checked in code.

Reads IFEval's own `input_data.jsonl` (one object a line: `key`, `prompt`, `instruction_id_list`, `kwargs`, a list
of one dict per instruction; unused keys may be null, as in the Hugging Face copy). Scores follow the benchmark's
definitions: *strict* checks the response as written; *loose* also accepts it after removing its first line, its
last line or both, each with and without '*' markdown (8 variants), so a preamble like "Sure, here it is:" or stray
bold does not fail an instruction. Accuracy is reported per prompt (every instruction followed) and per instruction.

Counting rules, as the reference implementation: words are `\\w+` runs; sentences end at '.', '!' or '?' followed
by space or the end; paragraphs are split by '***' lines (number_paragraphs) or blank lines (nth_paragraph_first_word).
Response language is detected by script and by stop words (no language-id model is downloaded): approximate for
closely related Latin-script languages.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

from deliberate.eval.capability.files import FormatError, field, read_jsonl

Checker = Callable[..., bool]
RELATIONS = ("less than", "at least")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _compare(n: int, relation: str, bound: int) -> bool:
  if relation not in RELATIONS:
    raise ValueError(f"relation {relation!r} is not one of {RELATIONS}")
  return n < bound if relation == "less than" else n >= bound


def count_words(text: str) -> int:
  return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
  pieces = [p for p in _SENTENCE_END.split(text) if p.strip()]
  return len(pieces)


def _keywords(text: str, keywords: Sequence[str]) -> bool:
  return all(re.search(re.escape(k), text, re.I) for k in keywords)


def _frequency(text: str, keyword: str, frequency: int, relation: str) -> bool:
  return _compare(len(re.findall(re.escape(keyword), text, re.I)), relation, frequency)


def _forbidden(text: str, forbidden_words: Sequence[str]) -> bool:
  return not any(re.search(r"\b" + re.escape(w) + r"\b", text, re.I) for w in forbidden_words)


def _letter_frequency(text: str, letter: str, let_frequency: int, let_relation: str) -> bool:
  return _compare(text.lower().count(letter.lower()), let_relation, let_frequency)


_STOPWORDS = {
    "en": "the and is are of to in that it with for you this not be",
    "de": "der die das und ist nicht ich sie mit zu ein eine auf für",
    "fr": "le la les et est des une pas que pour dans vous il avec",
    "es": "el la los las y es que de una por para con no se del",
    "it": "il di che non è una per sono della gli le con questo",
    "pt": "o a os as e é que de um uma não para com do da",
    "nl": "de het een en is van dat niet ik je met op voor zijn",
    "sv": "och att det är som en på för inte med jag har av",
    "fi": "ja on ei se että hän oli ovat mutta kuin tämä myös",
    "tr": "ve bir bu için çok ile da de ne olarak daha ama",
    "sw": "na ya wa kwa ni la za katika kuwa hii cha yake",
    "id": "dan yang di itu dengan untuk tidak ini dari ada akan",
}
_SCRIPTS = {"ru": "\u0400-\u04ff", "bg": "\u0400-\u04ff", "ar": "\u0600-\u06ff", "fa": "\u0600-\u06ff",
            "ur": "\u0600-\u06ff", "hi": "\u0900-\u097f", "mr": "\u0900-\u097f", "ne": "\u0900-\u097f",
            "bn": "\u0980-\u09ff", "pa": "\u0a00-\u0a7f", "gu": "\u0a80-\u0aff", "ta": "\u0b80-\u0bff",
            "te": "\u0c00-\u0c7f", "kn": "\u0c80-\u0cff", "ml": "\u0d00-\u0d7f", "th": "\u0e00-\u0e7f",
            "ko": "\uac00-\ud7af", "ja": "\u3040-\u30ff", "zh": "\u4e00-\u9fff", "he": "\u0590-\u05ff",
            "el": "\u0370-\u03ff"}


def detect_language(text: str) -> str:
  """ISO 639-1 code: by the dominant non-Latin script, else by the Latin-script language with most stop words."""
  letters = [ch for ch in text if ch.isalpha()]
  if not letters:
    return "unknown"
  for code, span in _SCRIPTS.items():
    if code == "ja" and re.search(f"[{span}]", text):
      return "ja"
    if code not in ("bg", "fa", "ur", "mr", "ne") and len(re.findall(f"[{span}]", text)) > len(letters) / 2:
      return code
  words = [w.lower() for w in _WORD.findall(text)]
  counts = {code: sum(w in set(s.split()) for w in words) for code, s in _STOPWORDS.items()}
  return max(counts, key=counts.get) if max(counts.values()) else "unknown"


def _language(text: str, language: str) -> bool:
  return detect_language(text) == language


def _num_sentences(text: str, num_sentences: int, relation: str) -> bool:
  return _compare(count_sentences(text), relation, num_sentences)


def _num_paragraphs(text: str, num_paragraphs: int) -> bool:
  parts = re.split(r"\s?\*\*\*\s?", text)
  if any(not p.strip() for i, p in enumerate(parts) if 0 < i < len(parts) - 1):
    return False  # an empty paragraph between two separators
  return len([p for p in parts if p.strip()]) == num_paragraphs


def _num_words(text: str, num_words: int, relation: str) -> bool:
  return _compare(count_words(text), relation, num_words)


def _nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
  paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
  if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
    return False
  words = re.findall(r"[\w'-]+", paragraphs[nth_paragraph - 1].lstrip(" \"'*#"))
  return bool(words) and words[0].lower() == first_word.lower()


def _placeholders(text: str, num_placeholders: int) -> bool:
  return len(re.findall(r"\[.*?\]", text)) >= num_placeholders


def _postscript(text: str, postscript_marker: str) -> bool:
  marker = postscript_marker.strip()
  pattern = r"\s*p\.\s?p\.?\s?s.*$" if marker.lower() == "p.p.s" else r"\s*" + re.escape(marker) + r".*$"
  return bool(re.search(pattern, text.lower() if marker.lower() == "p.p.s" else text, re.I | re.M))


def _bullets(text: str, num_bullets: int) -> bool:
  return len(re.findall(r"^\s*[*-][^\S\n]+\S", text, re.M)) == num_bullets


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained(text: str) -> bool:
  return any(option in text.strip() for option in CONSTRAINED_OPTIONS)


def _highlights(text: str, num_highlights: int) -> bool:
  single = [h for h in re.findall(r"\*[^\n*]+\*", text) if h.strip("*").strip()]
  double = [h for h in re.findall(r"\*\*[^\n*]+\*\*", text) if h.strip("*").strip()]
  return len(single) + len(double) >= num_highlights


def _sections(text: str, section_spliter: str, num_sections: int) -> bool:
  parts = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", text)
  return len(parts) - 1 >= num_sections


def _json(text: str) -> bool:
  body = text.strip()
  body = re.sub(r"^```(?:json|Json|JSON)?\s*", "", body)
  body = re.sub(r"\s*```$", "", body).strip()
  try:
    json.loads(body)
  except ValueError:
    return False
  return True


def _title(text: str) -> bool:
  return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", text))


def _two_responses(text: str) -> bool:
  parts = text.split("******")
  if len(parts) != 2:
    return False
  a, b = (p.strip() for p in parts)
  return bool(a) and bool(b) and a != b


def _repeat_prompt(text: str, prompt_to_repeat: str) -> bool:
  return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end(text: str, end_phrase: str) -> bool:
  return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _capital_words(text: str, capital_frequency: int, capital_relation: str) -> bool:
  return _compare(len(re.findall(r"\b[A-Z][A-Z0-9'-]*\b", text)), capital_relation, capital_frequency)


def _uppercase(text: str) -> bool:
  return text == text.upper() and any(ch.isalpha() for ch in text) and detect_language(text) in ("en", "unknown")


def _lowercase(text: str) -> bool:
  return text == text.lower() and any(ch.isalpha() for ch in text) and detect_language(text) in ("en", "unknown")


def _no_comma(text: str) -> bool:
  return "," not in text


def _quotation(text: str) -> bool:
  body = text.strip()
  return len(body) > 1 and body[0] == '"' and body[-1] == '"'


# IFEval's instruction ids (instructions_registry.py) -> checker; the kwargs each checker takes are its parameters.
CHECKERS: dict[str, Checker] = {
    "keywords:existence": lambda t, keywords: _keywords(t, keywords),
    "keywords:frequency": lambda t, keyword, frequency, relation: _frequency(t, keyword, frequency, relation),
    "keywords:forbidden_words": lambda t, forbidden_words: _forbidden(t, forbidden_words),
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _language,
    "length_constraints:number_sentences": _num_sentences,
    "length_constraints:number_paragraphs": _num_paragraphs,
    "length_constraints:number_words": _num_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:constrained_response": lambda t: _constrained(t),
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": lambda t: _json(t),
    "detectable_format:title": lambda t: _title(t),
    "combination:two_responses": lambda t: _two_responses(t),
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end,
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": lambda t: _uppercase(t),
    "change_case:english_lowercase": lambda t: _lowercase(t),
    "punctuation:no_comma": lambda t: _no_comma(t),
    "startend:quotation": lambda t: _quotation(t),
}


def check(instruction_id: str, response: str, kwargs: Mapping[str, Any]) -> bool:
  """One instruction, strictly. An empty response follows nothing."""
  if not response.strip():
    return False
  fn = CHECKERS[instruction_id]
  return bool(fn(response, **{k: v for k, v in kwargs.items() if v is not None}))


def loose_variants(response: str) -> list[str]:
  """The response, without its first line, its last line or both, each with and without '*' (IFEval's loose)."""
  lines = response.split("\n")
  cuts = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
  return [v for c in cuts for v in (c, c.replace("*", ""))]


def check_loose(instruction_id: str, response: str, kwargs: Mapping[str, Any]) -> bool:
  return any(v.strip() and check(instruction_id, v, kwargs) for v in loose_variants(response))


def load(path: str) -> list[dict[str, Any]]:
  """IFEval's input_data.jsonl: {'key', 'prompt', 'instruction_id_list', 'kwargs'} per line, validated against the
  checkers (unknown instruction ids and kwargs a checker does not take fail here, not mid-evaluation)."""
  import inspect
  out = []
  for n, row in read_jsonl(path):
    key = field(path, n, row, ("key",), (int, str))
    prompt = field(path, n, row, ("prompt",))
    ids = field(path, n, row, ("instruction_id_list",), list)
    kwargs = field(path, n, row, ("kwargs",), list, nonempty=False)
    if not ids:
      raise FormatError(path, n, "instruction_id_list", "empty")
    if len(kwargs) != len(ids):
      raise FormatError(path, n, "kwargs", f"{len(kwargs)} entries for {len(ids)} instruction ids")
    for iid, kw in zip(ids, kwargs):
      if iid not in CHECKERS:
        raise FormatError(path, n, "instruction_id_list", f"unknown instruction id {iid!r}")
      if not isinstance(kw, dict):
        raise FormatError(path, n, "kwargs", f"entry for {iid!r} is not an object")
      params = list(inspect.signature(CHECKERS[iid]).parameters)[1:]
      given = {k for k, v in kw.items() if v is not None}
      if given - set(params) or set(params) - given:
        raise FormatError(path, n, "kwargs", f"{iid!r} takes {params}, got {sorted(given)}")
    out.append({"id": str(key), "prompt": prompt, "instruction_id_list": list(ids),
                "kwargs": [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]})
  if not out:
    raise FormatError(path, None, None, "no prompts")
  return out


def score(item: Mapping[str, Any], response: str) -> dict[str, Any]:
  """Per-instruction strict and loose results of one response."""
  strict = [check(i, response, kw) for i, kw in zip(item["instruction_id_list"], item["kwargs"])]
  loose = [check_loose(i, response, kw) for i, kw in zip(item["instruction_id_list"], item["kwargs"])]
  return {"strict": strict, "loose": loose, "prompt_strict": all(strict), "prompt_loose": all(loose)}


def summary(scored: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
  """Accuracy (%) per prompt and per instruction, strict and loose."""
  instr_s = [x for r in scored for x in r["strict"]]
  instr_l = [x for r in scored for x in r["loose"]]
  pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else float("nan")
  return {"prompts": len(scored), "instructions": len(instr_s),
          "prompt_strict": pct([r["prompt_strict"] for r in scored]),
          "prompt_loose": pct([r["prompt_loose"] for r in scored]),
          "instruction_strict": pct(instr_s), "instruction_loose": pct(instr_l)}
