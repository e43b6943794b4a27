"""PyTorch reference for the engine benchmark: the same Llama (RMSNorm, RoPE, SwiGLU,
grouped-query attention, tied embeddings), batch, optimizer and thread count as mixpool's
engine, timed the same way. Prints one JSON object.

usage: reference.py '<json settings>'  (written by benches/engine.rs)
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.heads, self.kv_heads = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = d // self.heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


def rope(x, cos, sin):
    t, half = x.shape[2], x.shape[3] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:t] + rotated * sin[:t]


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, i = c["hidden_size"], c["intermediate_size"]
        self.input_layernorm = nn.RMSNorm(d, eps=c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=c["rms_norm_eps"])
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = nn.RMSNorm(c["hidden_size"], eps=c["rms_norm_eps"])
        hd = c["hidden_size"] // c["num_attention_heads"]
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        freqs = torch.outer(torch.arange(c["max_position_embeddings"], dtype=torch.float64), inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos().float())
        self.register_buffer("sin", angles.sin().float())

    def forward(self, tokens):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)


def token_stream(path):
    stream = []
    with open(path) as f:
        for line in f:
            stream.extend(json.loads(line)["text"].encode())
            stream.append(256)
            if len(stream) > 4_000_000:
                break
    return torch.tensor(stream, dtype=torch.long)


def main():
    s = json.loads(sys.argv[1])
    torch.set_num_threads(s["threads"])
    torch.manual_seed(0)
    c = s["config"]
    model = Llama(c)
    tokens = token_stream(s["data"])
    b, t = s["micro_batch"], s["seq_len"]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
    )

    def batch(i):
        starts = [(i * b + j) * t for j in range(b)]
        return torch.stack([tokens[s0:s0 + t + 1] for s0 in starts])

    def train_step(i):
        x = batch(i)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, c["vocab_size"]).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for i in range(s["warmup_steps"]):
        train_step(i)
    start = time.perf_counter()
    for i in range(s["steps"]):
        train_step(s["warmup_steps"] + i)
    train_seconds = time.perf_counter() - start

    eval_batches = s["eval_batches"]
    with torch.no_grad():
        model(batch(0)[:, :-1])
        start = time.perf_counter()
        nll = 0.0
        for i in range(eval_batches):
            x = batch(i)
            logp = model(x[:, :-1]).float().log_softmax(-1)
            nll += -logp.gather(-1, x[:, 1:].unsqueeze(-1)).sum(dtype=torch.float64).item()
        eval_seconds = time.perf_counter() - start

    print(json.dumps({
        "train_tokens_per_sec": s["steps"] * b * t / train_seconds,
        "eval_tokens_per_sec": eval_batches * b * t / eval_seconds,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
