"""Per-encoder cosine calibration: unrelated pairs vs translation pairs.

`measure_calibration(encoder)` embeds the sentences below and returns
(mean cosine of unrelated pairs, mean cosine of translation pairs), the `(lo, hi)` that
`similarity.calibrate` maps to 0 and 1. Translation pairs: each English sentence with its own
translation (6 languages x 12 sentences = 72 pairs; English-only encoders use the English
paraphrases). Unrelated pairs: each translation with a different English sentence (the
next one in the list), 72 pairs. The stored constants were measured with

  python -m pbrl_jax.rewards.calibration --encoder use_m3
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import numpy as np

# English sentences and their translations (ours).
PARALLEL: dict[str, tuple[str, ...]] = {
    "en": (
        "The train leaves the station at nine in the morning.",
        "My sister bought three apples and two oranges at the market.",
        "It rained all weekend, so we stayed at home and read books.",
        "The doctor told him to drink more water and sleep longer.",
        "A rectangle has a length of 8 meters and a width of 5 meters.",
        "The children are playing football in the park after school.",
        "She saves 20 dollars every week to buy a new bicycle.",
        "The museum is closed on Mondays but open every other day.",
        "He forgot his umbrella on the bus this morning.",
        "The farmer has 12 cows and sells milk in the village.",
        "Our teacher explained how plants turn sunlight into energy.",
        "The restaurant serves fresh fish caught the same day.",
    ),
    "de": (
        "Der Zug verlässt den Bahnhof um neun Uhr morgens.",
        "Meine Schwester hat auf dem Markt drei Äpfel und zwei Orangen gekauft.",
        "Es hat das ganze Wochenende geregnet, also sind wir zu Hause geblieben und haben"
        " Bücher gelesen.",
        "Der Arzt sagte ihm, er solle mehr Wasser trinken und länger schlafen.",
        "Ein Rechteck ist 8 Meter lang und 5 Meter breit.",
        "Die Kinder spielen nach der Schule Fußball im Park.",
        "Sie spart jede Woche 20 Dollar, um ein neues Fahrrad zu kaufen.",
        "Das Museum ist montags geschlossen, aber an allen anderen Tagen geöffnet.",
        "Er hat heute Morgen seinen Regenschirm im Bus vergessen.",
        "Der Bauer hat 12 Kühe und verkauft Milch im Dorf.",
        "Unser Lehrer hat erklärt, wie Pflanzen Sonnenlicht in Energie umwandeln.",
        "Das Restaurant serviert frischen Fisch, der am selben Tag gefangen wurde.",
    ),
    "fr": (
        "Le train quitte la gare à neuf heures du matin.",
        "Ma sœur a acheté trois pommes et deux oranges au marché.",
        "Il a plu tout le week-end, alors nous sommes restés à la maison à lire des livres.",
        "Le médecin lui a dit de boire plus d'eau et de dormir plus longtemps.",
        "Un rectangle mesure 8 mètres de long et 5 mètres de large.",
        "Les enfants jouent au football dans le parc après l'école.",
        "Elle économise 20 dollars chaque semaine pour acheter un nouveau vélo.",
        "Le musée est fermé le lundi mais ouvert tous les autres jours.",
        "Il a oublié son parapluie dans le bus ce matin.",
        "Le fermier a 12 vaches et vend du lait au village.",
        "Notre professeur a expliqué comment les plantes transforment la lumière du soleil en"
        " énergie.",
        "Le restaurant sert du poisson frais pêché le jour même.",
    ),
    "es": (
        "El tren sale de la estación a las nueve de la mañana.",
        "Mi hermana compró tres manzanas y dos naranjas en el mercado.",
        "Llovió todo el fin de semana, así que nos quedamos en casa leyendo libros.",
        "El médico le dijo que bebiera más agua y durmiera más.",
        "Un rectángulo tiene 8 metros de largo y 5 metros de ancho.",
        "Los niños juegan al fútbol en el parque después de la escuela.",
        "Ella ahorra 20 dólares cada semana para comprar una bicicleta nueva.",
        "El museo cierra los lunes pero abre todos los demás días.",
        "Olvidó su paraguas en el autobús esta mañana.",
        "El granjero tiene 12 vacas y vende leche en el pueblo.",
        "Nuestro profesor explicó cómo las plantas convierten la luz solar en energía.",
        "El restaurante sirve pescado fresco capturado el mismo día.",
    ),
    "pt": (
        "O trem sai da estação às nove horas da manhã.",
        "Minha irmã comprou três maçãs e duas laranjas no mercado.",
        "Choveu o fim de semana todo, então ficamos em casa lendo livros.",
        "O médico disse a ele para beber mais água e dormir mais.",
        "Um retângulo tem 8 metros de comprimento e 5 metros de largura.",
        "As crianças jogam futebol no parque depois da escola.",
        "Ela economiza 20 dólares por semana para comprar uma bicicleta nova.",
        "O museu fecha às segundas-feiras, mas abre em todos os outros dias.",
        "Ele esqueceu o guarda-chuva no ônibus hoje de manhã.",
        "O fazendeiro tem 12 vacas e vende leite na aldeia.",
        "Nosso professor explicou como as plantas transformam a luz do sol em energia.",
        "O restaurante serve peixe fresco pescado no mesmo dia.",
    ),
    "ru": (
        "Поезд отправляется со станции в девять утра.",
        "Моя сестра купила на рынке три яблока и два апельсина.",
        "Все выходные шёл дождь, поэтому мы сидели дома и читали книги.",
        "Врач сказал ему пить больше воды и дольше спать.",
        "Длина прямоугольника 8 метров, а ширина 5 метров.",
        "После школы дети играют в футбол в парке.",
        "Она каждую неделю откладывает 20 долларов, чтобы купить новый велосипед.",
        "Музей закрыт по понедельникам, но открыт во все остальные дни.",
        "Сегодня утром он забыл зонт в автобусе.",
        "У фермера 12 коров, и он продаёт молоко в деревне.",
        "Наш учитель объяснил, как растения превращают солнечный свет в энергию.",
        "Ресторан подаёт свежую рыбу, пойманную в тот же день.",
    ),
    "zh": (
        "火车早上九点离开车站。",
        "我姐姐在市场上买了三个苹果和两个橙子。",
        "整个周末都在下雨，所以我们待在家里看书。",
        "医生让他多喝水，多睡觉。",
        "一个长方形长8米，宽5米。",
        "孩子们放学后在公园里踢足球。",
        "她每周存20美元，用来买一辆新自行车。",
        "博物馆周一闭馆，其他时间每天开放。",
        "他今天早上把雨伞忘在公交车上了。",
        "这个农民有12头奶牛，在村里卖牛奶。",
        "我们的老师讲解了植物如何把阳光转化为能量。",
        "这家餐馆供应当天捕捞的新鲜鱼。",
    ),
    # English paraphrases, for English-only encoders.
    "en_para": (
        "At 9 a.m. the train departs from the station.",
        "At the market my sister got two oranges and three apples.",
        "We spent the rainy weekend indoors reading.",
        "He was advised by the doctor to sleep more and drink more water.",
        "A rectangle is 8 m long and 5 m wide.",
        "After class the kids play soccer in the park.",
        "Every week she puts aside 20 dollars for a new bike.",
        "The museum opens every day except Monday.",
        "This morning he left his umbrella on the bus.",
        "The farmer owns 12 cows and sells their milk in the village.",
        "The teacher showed us how plants make energy from sunlight.",
        "The restaurant's fish is caught on the day it is served.",
    ),
}
TRANSLATION_LANGS = ("de", "fr", "es", "pt", "ru", "zh")


def calibration_pairs(english_only: bool = False
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(translation pairs, unrelated pairs) of (other-language text, English text)."""
  en = PARALLEL["en"]
  langs = ("en_para",) if english_only else TRANSLATION_LANGS
  same, unrelated = [], []
  for lang in langs:
    for i, text in enumerate(PARALLEL[lang]):
      same.append((text, en[i]))
      unrelated.append((text, en[(i + 1) % len(en)]))
  return same, unrelated


def measure_calibration(encoder, english_only: bool = False) -> tuple[float, float]:
  """(mean unrelated cosine, mean translation cosine) of an encoder with `encode`."""
  same, unrelated = calibration_pairs(english_only)
  def mean_cos(pairs: Sequence[tuple[str, str]]) -> float:
    a = encoder.encode([p[0] for p in pairs])
    b = encoder.encode([p[1] for p in pairs])
    return float(np.mean(np.sum(a * b, axis=-1)))
  return round(mean_cos(unrelated), 4), round(mean_cos(same), 4)


def main() -> None:
  from pbrl_jax.rewards.encoders import load_encoder  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--encoder", default="use_m3")
  parser.add_argument("--english_only", action="store_true")
  args = parser.parse_args()
  lo, hi = measure_calibration(load_encoder(args.encoder), args.english_only)
  print(json.dumps({"encoder": args.encoder, "unrelated": lo, "translation": hi}))


if __name__ == "__main__":
  main()
