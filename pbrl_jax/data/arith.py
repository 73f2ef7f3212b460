"""One-step arithmetic word problems in eight languages, parallel across languages.

Meant as a regime where a 135M instruct model can be above zero in English (it scores 0% on
multilingual-gsm-symbolic), for the miniature study (experiments/miniature/). Each instance is
one template with one draw of numbers, written in every language with the same numbers; its
English worked solution (ending in `#### N`) is the oracle pivot reference.

Four templates: buying more (a + b), giving away (a - b), boxes of pencils (a * b), girls and
boys in a class (a + b). Numbers are drawn so that Russian always takes the genitive plural
(5 to 20) and differences stay positive.

  from pbrl_jax.data import arith
  arith.write_split(out_dir, langs=arith.LANGS, n_train=64, n_test=24, seed=0)
  python -m pbrl_jax.data.arith --out DIR     # the same from the shell

writes OUT/train.jsonl and OUT/test.jsonl (the generic JSONL layout that `data.source =
'jsonl'` and evaluation datasets of kind 'jsonl' read: id, lang, question, answer) and
OUT/train_references.jsonl (what `pbrl-pivot --references` imports), atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Callable, Sequence

from pbrl_jax.fileio import atomic_write

LANGS = ("en", "de", "fr", "es", "pt", "ru", "zh", "ja")


@dataclasses.dataclass(frozen=True)
class Template:
  """One problem shape: question text per language, the English solution, the operation."""

  name: str
  questions: dict[str, str]
  solution_en: str
  op: Callable[[int, int], int]
  draw: Callable[[random.Random], tuple[int, int]]


def _draw_sum(rng: random.Random) -> tuple[int, int]:
  return rng.randint(5, 20), rng.randint(5, 20)


def _draw_diff(rng: random.Random) -> tuple[int, int]:
  a = rng.randint(10, 20)
  return a, rng.randint(5, a - 1)


def _draw_product(rng: random.Random) -> tuple[int, int]:
  return rng.randint(5, 9), rng.randint(5, 12)


TEMPLATES = (
    Template(
        "buy_more",
        {
            "en": "Anna has {a} apples. She buys {b} more apples. How many apples does Anna "
                  "have now?",
            "de": "Anna hat {a} Äpfel. Sie kauft noch {b} Äpfel dazu. Wie viele Äpfel hat Anna "
                  "jetzt?",
            "fr": "Marie a {a} pommes. Elle achète encore {b} pommes. Combien de pommes Marie "
                  "a-t-elle maintenant ?",
            "es": "María tiene {a} manzanas. Compra {b} manzanas más. ¿Cuántas manzanas tiene "
                  "María ahora?",
            "pt": "Ana tem {a} maçãs. Ela compra mais {b} maçãs. Quantas maçãs Ana tem agora?",
            "ru": "У Анны {a} яблок. Она покупает ещё {b} яблок. Сколько яблок теперь у Анны?",
            "zh": "小红有{a}个苹果。她又买了{b}个苹果。小红现在有多少个苹果？",
            "ja": "花子さんはりんごを{a}個持っています。さらにりんごを{b}個買いました。"
                  "花子さんは今りんごを何個持っていますか？",
        },
        "Anna starts with {a} apples and buys {b} more, so she has {a} + {b} = {r} apples.",
        lambda a, b: a + b, _draw_sum),
    Template(
        "give_away",
        {
            "en": "Anna has {a} stickers. She gives {b} stickers to a friend. How many stickers "
                  "does Anna have left?",
            "de": "Anna hat {a} Aufkleber. Sie schenkt einer Freundin {b} Aufkleber. Wie viele "
                  "Aufkleber hat Anna noch?",
            "fr": "Marie a {a} autocollants. Elle donne {b} autocollants à une amie. Combien "
                  "d'autocollants reste-t-il à Marie ?",
            # (The terser "Le regala {b} pegatinas a una amiga." scores 0.5 on our language
            # check: too few Spanish function words to tell it from Portuguese.)
            "es": "María tiene {a} pegatinas y le regala {b} de ellas a una amiga. ¿Cuántas "
                  "pegatinas le quedan a María?",
            "pt": "Ana tem {a} adesivos. Ela dá {b} adesivos a uma amiga. Quantos adesivos "
                  "restam para Ana?",
            "ru": "У Анны {a} наклеек. Она дарит подруге {b} наклеек. Сколько наклеек осталось "
                  "у Анны?",
            "zh": "小红有{a}张贴纸。她送给朋友{b}张贴纸。小红还剩多少张贴纸？",
            "ja": "花子さんはシールを{a}枚持っています。友達にシールを{b}枚あげました。"
                  "花子さんのシールは何枚残っていますか？",
        },
        "Anna has {a} stickers and gives away {b}, so {a} - {b} = {r} stickers are left.",
        lambda a, b: a - b, _draw_diff),
    Template(
        "boxes",
        {
            "en": "There are {a} boxes with {b} pencils in each box. How many pencils are there "
                  "in total?",
            "de": "Es gibt {a} Schachteln mit je {b} Bleistiften. Wie viele Bleistifte sind es "
                  "insgesamt?",
            "fr": "Il y a {a} boîtes contenant chacune {b} crayons. Combien y a-t-il de crayons "
                  "en tout ?",
            "es": "Hay {a} cajas con {b} lápices en cada caja. ¿Cuántos lápices hay en total?",
            "pt": "Há {a} caixas com {b} lápis em cada caixa. Quantos lápis há no total?",
            "ru": "Есть {a} коробок, в каждой по {b} карандашей. Сколько всего карандашей?",
            "zh": "有{a}个盒子，每个盒子里有{b}支铅笔。一共有多少支铅笔？",
            "ja": "箱が{a}個あり、それぞれの箱に鉛筆が{b}本入っています。鉛筆は全部で何本ありますか？",
        },
        "Each of the {a} boxes holds {b} pencils, so there are {a} * {b} = {r} pencils.",
        lambda a, b: a * b, _draw_product),
    Template(
        "class_size",
        {
            "en": "A class has {a} girls and {b} boys. How many children are in the class?",
            "de": "In einer Klasse sind {a} Mädchen und {b} Jungen. Wie viele Kinder sind in der "
                  "Klasse?",
            "fr": "Une classe compte {a} filles et {b} garçons. Combien d'enfants y a-t-il dans "
                  "la classe ?",
            "es": "En una clase hay {a} niñas y {b} niños. ¿Cuántos alumnos hay en la clase?",
            "pt": "Uma turma tem {a} meninas e {b} meninos. Quantas crianças há na turma?",
            "ru": "В классе {a} девочек и {b} мальчиков. Сколько детей в классе?",
            "zh": "一个班有{a}个女孩和{b}个男孩。这个班一共有多少个孩子？",
            "ja": "あるクラスには女の子が{a}人、男の子が{b}人います。クラスには子どもが何人いますか？",
        },
        "The class has {a} girls and {b} boys, so there are {a} + {b} = {r} children.",
        lambda a, b: a + b, _draw_sum),
)


@dataclasses.dataclass(frozen=True)
class Instance:
  """One problem in every language (same numbers), with its English solution."""

  id: str
  questions: dict[str, str]
  solution_en: str
  answer: str


def instances(n: int, seed: int = 0, start: int = 0) -> list[Instance]:
  """Instances start .. start+n-1; instance k uses template k % 4 and its own seeded draw."""
  out = []
  for k in range(start, start + n):
    t = TEMPLATES[k % len(TEMPLATES)]
    a, b = t.draw(random.Random(f"{seed}:{k}"))
    r = t.op(a, b)
    out.append(Instance(
        id=f"arith-{t.name}-{k:04d}",
        questions={lang: q.format(a=a, b=b) for lang, q in t.questions.items()},
        solution_en=t.solution_en.format(a=a, b=b, r=r) + f"\n#### {r}", answer=str(r)))
  return out


def _jsonl(rows: Sequence[dict]) -> bytes:
  return ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


def write_split(out_dir: str, langs: Sequence[str] = LANGS, n_train: int = 64,
                n_test: int = 24, seed: int = 0) -> dict[str, str]:
  """Writes train/test question files and the train references; returns their paths.

  Train and test instances are disjoint (ids start .. start+n), and English is always
  included: it is the pivot language (and the reference point of the gap).
  """
  unknown = sorted(set(langs) - set(LANGS))
  if unknown:
    raise ValueError(f"arith: no templates for languages {unknown}; have {list(LANGS)}")
  langs = ["en"] + [x for x in langs if x != "en"]
  train = instances(n_train, seed, start=0)
  test = instances(n_test, seed, start=n_train)
  paths = {name: os.path.join(out_dir, f"{name}.jsonl")
           for name in ("train", "test", "train_references")}
  os.makedirs(out_dir, exist_ok=True)
  for name, insts in (("train", train), ("test", test)):
    rows = [{"id": i.id, "lang": lang, "question": i.questions[lang], "answer": i.answer}
            for lang in langs for i in insts]
    atomic_write(paths[name], _jsonl(rows))
  refs = [{"id": i.id, "question": i.questions["en"], "response": i.solution_en,
           "answer": i.answer} for i in train]
  atomic_write(paths["train_references"], _jsonl(refs))
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description="Write the arithmetic problems (train/test/refs).")
  ap.add_argument("--out", required=True)
  ap.add_argument("--langs", default=",".join(LANGS))
  ap.add_argument("--n_train", type=int, default=64)
  ap.add_argument("--n_test", type=int, default=24)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  paths = write_split(args.out, [x for x in args.langs.split(",") if x], args.n_train,
                      args.n_test, args.seed)
  for name, path in paths.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
