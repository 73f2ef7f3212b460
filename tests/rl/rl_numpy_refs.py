"""Plain NumPy loop references for the RL math (one scalar at a time, no vectorisation)."""

from __future__ import annotations

import math

import numpy as np


def grpo(rewards, g, std_floor=0.0, eps=1e-4, ddof=1, scale=True):
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), g):
    grp = [float(r) for r in rewards[start:start + g]]
    mean = sum(grp) / g
    var = sum((r - mean) ** 2 for r in grp) / (g - ddof)
    std = math.sqrt(var)
    for i, r in enumerate(grp):
      out[start + i] = (r - mean) / (max(std, std_floor) + eps) if scale else r - mean
  return out


def rloo(rewards, g):
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), g):
    for i in range(g):
      others = [float(rewards[start + j]) for j in range(g) if j != i]
      out[start + i] = float(rewards[start + i]) - sum(others) / len(others)
  return out


def rank(rewards, g):
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), g):
    grp = [float(r) for r in rewards[start:start + g]]
    for i, r in enumerate(grp):
      less = sum(1 for x in grp if x < r)
      equal = sum(1 for x in grp if x == r)
      out[start + i] = 2.0 * (less + (equal - 1) / 2.0) / (g - 1) - 1.0
  return out


def gae(rewards, values, mask, gamma, lam, bootstrap):
  b, t = rewards.shape
  adv = np.zeros((b, t))
  for i in range(b):
    last = 0.0
    for s in reversed(range(t)):
      if s == t - 1:
        next_v, next_m = float(bootstrap[i]), 1.0
      else:
        next_v, next_m = float(values[i, s + 1]) * float(mask[i, s + 1]), float(mask[i, s + 1])
      delta = float(rewards[i, s]) + gamma * next_v - float(values[i, s])
      last = (delta + gamma * lam * last * next_m) * float(mask[i, s])
      adv[i, s] = last
  returns = (adv + values) * mask
  return adv, returns


def whiten(x, mask, shift_mean=True, eps=1e-8):
  vals = [float(x[idx]) for idx in np.ndindex(x.shape) if mask[idx]]
  mean = sum(vals) / len(vals)
  var = sum((v - mean) ** 2 for v in vals) / len(vals)
  out = np.zeros(x.shape)
  for idx in np.ndindex(x.shape):
    if mask[idx]:
      out[idx] = (float(x[idx]) - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
  return out


def surrogate(logp, old_logp, adv, eps_low, eps_high, dual_clip=None):
  b, t = logp.shape
  loss, low, high = np.zeros((b, t)), np.zeros((b, t)), np.zeros((b, t))
  for i in range(b):
    a = float(adv[i])
    for s in range(t):
      ratio = math.exp(float(logp[i, s]) - float(old_logp[i, s]))
      clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
      val = -min(ratio * a, clipped * a)
      if dual_clip is not None and a < 0:
        val = min(val, -dual_clip * a)
      loss[i, s] = val
      low[i, s] = float(ratio < 1 - eps_low and a < 0)
      high[i, s] = float(ratio > 1 + eps_high and a > 0)
  return loss, low, high


def value_loss(v, old_v, ret, clip):
  out = np.zeros(v.shape)
  for idx in np.ndindex(v.shape):
    vc = float(old_v[idx]) + min(max(float(v[idx]) - float(old_v[idx]), -clip), clip)
    out[idx] = 0.5 * max((float(v[idx]) - float(ret[idx])) ** 2, (vc - float(ret[idx])) ** 2)
  return out


def kl(logp, ref, kind):
  out = np.zeros(logp.shape)
  for idx in np.ndindex(logp.shape):
    x = float(ref[idx]) - float(logp[idx])
    out[idx] = {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - x - 1}[kind]
  return out


def aggregate(per_token, mask, mode, max_len=None):
  b, t = per_token.shape
  if mode == "token_mean":
    s = sum(per_token[i, j] * mask[i, j] for i in range(b) for j in range(t))
    return s, sum(mask[i, j] for i in range(b) for j in range(t))
  if mode == "seq_mean_token_mean":
    s = 0.0
    for i in range(b):
      n = sum(mask[i, j] for j in range(t))
      s += sum(per_token[i, j] * mask[i, j] for j in range(t)) / max(n, 1)
    return s, b
  s = sum(per_token[i, j] * mask[i, j] for i in range(b) for j in range(t))
  if mode == "seq_sum":
    return s, b
  return s, b * (t if max_len is None else max_len)


def sequence_weights(logp, old_logp, mask):
  """GSPO: exp of each sequence's masked mean token log-ratio, [B]."""
  out = []
  for i in range(logp.shape[0]):
    n = sum(mask[i])
    total = sum((float(logp[i, s]) - float(old_logp[i, s])) * mask[i, s]
                for s in range(logp.shape[1]))
    out.append(math.exp(total / max(n, 1.0)))
  return np.asarray(out)


def cispo(logp, weights, adv, eps_high):
  """-min(w, eps_high) A log pi per token (weights [B,T]); and the clipped indicator."""
  loss, clipped = np.zeros(logp.shape), np.zeros(logp.shape)
  for i, s in np.ndindex(logp.shape):
    a, w = float(adv[i]), float(weights[i, s])
    loss[i, s] = -min(w, eps_high) * a * float(logp[i, s])
    clipped[i, s] = float(w > eps_high and a > 0)
  return loss, clipped


def sapo(weights, adv, tau_pos, tau_neg):
  out = np.zeros(weights.shape)
  for i, s in np.ndindex(weights.shape):
    a = float(adv[i])
    tau = tau_pos if a > 0 else tau_neg
    out[i, s] = -1.0 / (1.0 + math.exp(-tau * (float(weights[i, s]) - 1.0))) * 4.0 / tau * a
  return out


def vespo(logp, old_logp, mask, adv, k_pos, lam_pos, k_neg, lam_neg, rollout_weight=None):
  """Per-token -phi(W) A log pi and phi [B], one loop per row and token: log W sums the
  token log-ratios clipped to +-20 (and the logs of rollout weights clipped to
  [log 1e-8, 20]) over valid tokens, then is clipped to [log 1e-8, 20];
  phi = exp(lam + k log W - lam W) with (k, lam) by the sign of A (A >= 0: positive)."""
  lo = math.log(1e-8)
  b, t = logp.shape
  loss, phis = np.zeros((b, t)), np.zeros(b)
  for i in range(b):
    log_w = 0.0
    for s in range(t):
      if mask[i, s]:
        log_w += min(max(float(logp[i, s]) - float(old_logp[i, s]), -20.0), 20.0)
        if rollout_weight is not None:
          rho = float(rollout_weight[i, s])
          log_w += min(max(math.log(rho) if rho > 0 else -math.inf, lo), 20.0)
    log_w = min(max(log_w, lo), 20.0)
    a = float(adv[i])
    k, lam = (k_pos, lam_pos) if a >= 0 else (k_neg, lam_neg)
    lam = max(lam, 1e-4)
    phis[i] = math.exp(lam + k * log_w - lam * math.exp(log_w))
    for s in range(t):
      loss[i, s] = -phis[i] * a * float(logp[i, s])
  return loss, phis


def kl_reward(scores, kl_tok, mask, beta):
  b, t = kl_tok.shape
  out = np.zeros((b, t))
  for i in range(b):
    last = -1
    for s in range(t):
      if mask[i, s]:
        out[i, s] = -beta * float(kl_tok[i, s])
        last = s
    if last >= 0:
      out[i, last] += float(scores[i])
  return out


def rollout_correction(trainer, sampler, mask, mode, low, high):
  """Per-token weights, one loop per row and token, and the share of valid tokens bounded.

  mode: '<token|sequence>_<truncate|mask>'; low/high None means no bound."""
  level, action = mode.split("_")
  b, t = trainer.shape
  lo = -np.inf if low is None else low
  hi = np.inf if high is None else high
  weights = np.zeros((b, t))
  bounded = 0
  for i in range(b):
    seq_log = 0.0
    for k in range(t):
      if mask[i, k]:
        seq_log += trainer[i, k] - sampler[i, k]
    for k in range(t):
      log_rho = seq_log if level == "sequence" else (
          (trainer[i, k] - sampler[i, k]) if mask[i, k] else 0.0)
      rho = math.exp(log_rho)
      out = rho < lo or rho > hi
      if action == "truncate":
        weights[i, k] = min(max(rho, lo), hi)
      else:
        weights[i, k] = 0.0 if out else rho
      if out and mask[i, k]:
        bounded += 1
  return weights, bounded / max(mask.sum(), 1)


def entropy_mask(entropy, mask, quantile):
  """Keep valid tokens with entropy >= the linear-interpolation (1 - quantile) quantile of
  the valid entropies, computed by sorting."""
  vals = sorted(entropy[i, k] for i in range(entropy.shape[0])
                for k in range(entropy.shape[1]) if mask[i, k])
  out = np.zeros(entropy.shape)
  if not vals:
    return out
  pos = (1.0 - quantile) * (len(vals) - 1)
  lo = int(math.floor(pos))
  hi = min(lo + 1, len(vals) - 1)
  threshold = vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
  for i in range(entropy.shape[0]):
    for k in range(entropy.shape[1]):
      out[i, k] = float(bool(mask[i, k]) and entropy[i, k] >= threshold)
  return out
