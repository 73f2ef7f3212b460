"""Tokenizer backends give the same ids: HF tokenizers vs tensorflow-text SentencePiece."""

import io
import pickle

import pytest

from pbrl_jax.data.tokenize import HFTokenizer
from pbrl_jax.padding import bucket_for, left_pad

TEXTS = ["Eine Nebelbank zieht vom Meer her, 185 Minuten.", "A city of fog, 38 km across?",
         "Un banc de brouillard arrive de l'océan.", "", "  doppelte  Leerzeichen  "]
CORPUS = ["Eine Nebelbank zieht vom Meer her in eine Stadt hinein.",
          "A fog bank rolls in from the ocean to cover a city.",
          "Un banc de brouillard arrive de l'océan.",
          "How many minutes will it take? 185 minutes, 38 km."] * 50


@pytest.fixture(scope="module")
def sp_model() -> bytes:
  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf,
                                 vocab_size=60, model_type="unigram", minloglevel=2)
  return buf.getvalue()


@pytest.fixture(scope="module")
def hf_backend(sp_model):
  """The SentencePiece model as an HF fast tokenizer (Unigram, NFKC, Metaspace)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_proto=sp_model)
  vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id()))
  # SentencePiece's default normaliser: NFKC, and extra whitespace removed.
  tok.normalizer = normalizers.Sequence([
      normalizers.NFKC(), normalizers.Strip(),
      normalizers.Replace(Regex(" {2,}"), " ")])
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>"), pad_id=0)


def test_hf_backend_matches_sentencepiece(sp_model, hf_backend):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_proto=sp_model)
  got = hf_backend.encode(TEXTS)
  assert got == [sp.encode(t) for t in TEXTS]
  assert pickle.loads(pickle.dumps(hf_backend)).encode(TEXTS) == got


def test_tf_text_backend_matches_hf(sp_model, hf_backend):
  pytest.importorskip("tensorflow_text")
  from pbrl_jax.data.tokenize import TfTextSentencePiece  # pylint: disable=g-import-not-at-top
  tf_backend = TfTextSentencePiece(sp_model)
  assert tf_backend.encode(TEXTS) == hf_backend.encode(TEXTS)
  # Grain workers receive the backend by pickling; it rebuilds from the model proto.
  assert pickle.loads(pickle.dumps(tf_backend)).encode(TEXTS) == hf_backend.encode(TEXTS)


def test_left_pad_and_buckets():
  tokens, valid = left_pad([[5, 6], [], [1, 2, 3]], 4, pad_id=9)
  assert tokens.tolist() == [[9, 9, 5, 6], [9, 9, 9, 9], [9, 1, 2, 3]]
  assert valid.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]]
  with pytest.raises(ValueError):
    left_pad([[1, 2, 3]], 2, 0)
  assert bucket_for(100, (64, 128)) == 128 and bucket_for(129, (64, 128)) is None
