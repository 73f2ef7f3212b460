"""Final-answer extraction and reasoning/answer splitting across scripts and locales."""

import pytest

from pbrl_jax.rewards import answers

CASES = [
    # (text, lang, expected)
    ("She has 3 + 5 = 8 apples.\n#### 8", None, "8"),
    ("so the total is #### 1,234", "en", "1234"),
    ("Thus \\boxed{42}.", None, "42"),
    ("First \\boxed{\\frac{1}{2}} then \\boxed{\\dfrac{3}{4}}", None, "0.75"),
    ("\\boxed{\\text{B}}", None, "B"),
    ("The answer is 17.", "en", "17"),
    ("The final answer is $1,234.50.", "en", "1234.5"),
    ("Die Antwort lautet 1.234.", "de", "1234"),
    ("Die Antwort ist 3,5 Liter.", "de", "3.5"),
    ("La réponse est 1 234,5 €.", "fr", "1234.5"),
    ("La réponse est 1\u202f234,5 €.", "fr", "1234.5"),
    ("La respuesta es 12.", "es", "12"),
    ("La risposta è 0,25.", "it", "0.25"),
    ("A resposta é 1.000.000.", "pt", "1000000"),
    ("Ответ: 1 234,5", "ru", "1234.5"),
    ("答案是42", "zh", "42"),
    ("所以答案：１２３。", "zh", "123"),
    ("答えは４２です。", "ja", "42"),
    ("정답은 42입니다.", "ko", "42"),
    ("الإجابة هي ٤٢", "ar", "42"),
    ("الإجابة هي ١٢٫٥", "ar", "12.5"),
    ("الإجابة هي ۱۲", "fa", "12"),
    ("उत्तर है ४२", "hi", "42"),
    ("คำตอบคือ ๔๒", "th", "42"),
    ("Cevap: 7", "tr", "7"),
    ("Het antwoord is 12,5", "nl", "12.5"),
    ("Odpowiedź: 1 000", "pl", "1000"),
    ("The answer is -3.", "en", "-3"),
    ("The answer is −3.", "en", "-3"),
    ("Swiss style: the answer is 1'234", None, "1234"),
    ("no marker, just 12 apples then 15 pears", None, "15"),
    # Multiple choice, MMLU-ProX style.
    ("The answer is (B).", "en", "B"),
    ("Answer: **D**", "en", "D"),
    ("La respuesta correcta es (J)", "es", "J"),
    ("Die Antwort ist C.", "de", "C"),
    ("答案是 (C)", "zh", "C"),
    ("答案：Ｅ", "zh", "E"),
    ("Ответ: A", "ru", "A"),
    ("정답은 (F)입니다", "ko", "F"),
    ("الإجابة هي (G)", "ar", "G"),
    # Qwen3 reasoning blocks: the answer comes after </think>.
    ("<think>Maybe 5? No, 2 + 2 = 4.</think>\nThe answer is 4.", "en", "4"),
    ("<think>long thought ending in 99</think>答案是 7", "zh", "7"),
]


@pytest.mark.parametrize("text,lang,want", CASES)
def test_extract(text, lang, want):
  assert answers.extract_final_answer(text, lang) == want


@pytest.mark.parametrize("text", ["", "   ", "no numbers here", "<think>2 + 2</think>"])
def test_nothing_to_extract(text):
  assert answers.extract_final_answer(text) is None


def test_letters_are_not_taken_from_plain_text():
  assert answers.extract_final_answer("I think so. A dog.") is None
  # "ответил" is not the phrase "ответ": the last number wins, not the one after it.
  assert answers.extract_final_answer("Ответил 5 человек, а пришло 7.", "ru") == "7"
  assert answers.extract_final_answer("答案是C", "zh") == "C"


def test_locale_separators():
  assert answers.parse_number("1,234", "en") == 1234.0
  assert answers.parse_number("1,234", "de") == 1.234
  assert answers.parse_number("1.234", "de") == 1234.0
  assert answers.parse_number("0.125", "de") == 0.125
  assert answers.parse_number("1.234,56", "de") == 1234.56
  assert answers.parse_number("1,234.56", "en") == 1234.56
  assert answers.parse_number("3/4") == 0.75
  assert answers.parse_number("1/0") is None


def test_split_reasoning_answer():
  assert answers.split_reasoning_answer("a\nb\n#### 5") == ("a\nb", "#### 5")
  assert answers.split_reasoning_answer("<think>x</think> y") == ("x", "y")
  assert answers.split_reasoning_answer("<think>a</think>b<think>c</think> d") == ("a\nc", "d")
  assert answers.split_reasoning_answer("<think>unfinished") == ("unfinished", "")
  reasoning, answer = answers.split_reasoning_answer("Schritt eins.\nDie Antwort ist 4.")
  assert reasoning == "Schritt eins." and answer == "Die Antwort ist 4."
  assert answers.split_reasoning_answer("one line 4") == ("one line 4", "one line 4")
  assert answers.split_reasoning_answer("step\nstep two\nso 4") == ("step\nstep two", "so 4")


def test_matching_and_verifiable():
  assert answers.answers_match("1234.5", "1234.50001", rel_tol=1e-6)
  assert not answers.answers_match("8", "9")
  assert answers.answers_match("b", "B")
  assert not answers.answers_match("B", "2")
  assert not answers.answers_match(None, "1")
  assert answers.verifiable_reward("Ответ: 1 234,5", "1234.5", "ru") == 1.0
  assert answers.verifiable_reward("#### 8", 8) == 1.0
  assert answers.verifiable_reward("#### 8", "Full solution...\n#### 9") == 0.0
  assert answers.verifiable_reward("The answer is (C)", "C") == 1.0
  assert answers.verifiable_reward("anything", None) == 0.0


@pytest.mark.parametrize("text,expected", [
    ("Sie hat 3 + 5 = 8 Äpfel.\n#### 8", 1.0),
    ("#### 8", 1.0),
    ("#### 1.234,5", 1.0),
    ("#### B", 1.0),
    ("Sie hat 8 Äpfel.", 0.0),               # no marker
    ("#### 8\n#### 9", 0.0),                 # hedging between two answers
    ("Die Antwort:\n#### ", 0.0),            # marker with nothing readable
    ("#### acht", 0.0),
])
def test_final_answer_format(text, expected):
  assert answers.final_answer_format(text, "de") == expected


@pytest.mark.parametrize("answer,target,expected", [
    ("8", "8", 1.0), ("7", "8", 0.875), ("9", "8", 0.875), ("16", "8", 0.0), ("0", "8", 0.0),
    ("100", "8", 0.0), ("0.5", "0", 0.5), ("-2", "-4", 0.5), ("B", "B", 1.0), ("C", "B", 0.0),
    (None, "8", 0.0), ("8", None, 0.0),
])
def test_answer_closeness_by_hand(answer, target, expected):
  assert answers.answer_closeness(answer, target) == pytest.approx(expected, abs=1e-12)
