"""Reward encoders: Flax USE-m3 and BERT/XLM-R, and host-side engines, one interface.

The interface (`TextEncoder`) and the spec loader (`load_encoder`) live in
`pbrl_jax.rewards.encoders`.
"""

from pbrl_jax.models.encoders.bert import BertConfig, BertEncoder, load_hf_encoder
from pbrl_jax.models.encoders.host import HostEncoder, load_host_encoder
from pbrl_jax.models.encoders.use_m3 import UseM3Encoder, load_use_m3
