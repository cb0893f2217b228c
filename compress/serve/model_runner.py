"""The model side of the engine: a Hugging Face causal LM over the slot KV cache, its decode step replayed as
CUDA graphs, sampling on the device.

- prefill(seqs): one forward for the prompt chunks of the sequences admitted or still prefilling (each chunk
  is `prompt_ids[num_computed:prefill_to]`, set by the scheduler within its per-step token budget), right-padded
  to the widest; a sequence whose prompt is complete gets its first token.
- decode(seqs): one token for every running sequence. The step runs rows [0, b) of the cache, b the smallest
  batch bucket (1, 2, 4, 8, 16, 32, ...) covering the highest slot in use, and reads keys up to the smallest
  length bucket (128, 256, ...) covering the longest row. On CUDA each (b, length) step is captured once as a
  CUDA graph and replayed: one launch per step instead of one per kernel. Input ids and positions stay in
  device tensors that the step itself advances, so the host only reads back the new token ids.
- remove(seqs): free their slots.

The model code stays Hugging Face's: attention is `compress.serve.attention.slot_attention`, registered through
`AttentionInterface`, so any full-attention Llama-family checkpoint works, quantized ones included (their
kernels are captured like bf16 ones). A step that cannot be captured (bitsandbytes LLM.int8() syncs with the
host) runs eagerly, and `graph_fallback` says why.
"""

from __future__ import annotations

import torch

from compress.errors import CompressError
from compress.serve import attention
from compress.serve.attention import StepContext
from compress.serve.sampling import Sampler, prompt_logprobs
from compress.serve.sequence import SamplingParams, Sequence
from compress.serve.slots import SlotKVCache


def buckets(limit: int, first: int) -> list[int]:
    """first, 2*first, 4*first, ... below limit, then limit itself."""
    out, b = [], first
    while b < limit:
        out.append(b)
        b *= 2
    return out + [limit]


class ModelRunner:
    def __init__(self, model, tokenizer, device: str, max_batch: int = 8, max_len: int | None = None,
                 graphs: bool = True, min_kv_bucket: int = 128):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        config = model.config.get_text_config(decoder=True)
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) and \
                any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
            raise CompressError("compress serve supports full-attention models only (this one uses sliding windows)")
        limit = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self.max_context = min(max_len or limit, limit)  # the longest sequence (prompt + output) a slot holds
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        attention.register()
        model.set_attn_implementation(attention.NAME)
        self.decoder, self.lm_head = model.get_decoder(), model.get_output_embeddings()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        dtype = self.decoder.get_input_embeddings().weight.dtype
        self.cache = SlotKVCache(config.num_hidden_layers, max_batch, config.num_key_value_heads, head_dim,
                                 self.max_context, dtype, self.device)
        self.sampler = Sampler(max_batch, config.vocab_size, self.device, self.eos_ids)
        trash = self.cache.trash
        self.ids = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # each row's next input token
        self.pos = torch.full((max_batch,), trash, dtype=torch.long, device=self.device)  # its position
        self.rows = torch.arange(max_batch, device=self.device)
        self.key_range = torch.arange(self.max_context + 1, device=self.device)
        self.batch_buckets = buckets(max_batch, 1)
        self.kv_buckets = buckets(self.max_context + 1, min_kv_bucket)
        self.use_graphs = graphs and self.device.type == "cuda"
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.graph_fallback: str | None = None  # why decode runs eagerly on CUDA, if it does
        self._pool = None

    # -- the Runner protocol -------------------------------------------------------------------------------
    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[int | None]:
        """Run each sequence's next prompt chunk (all in one forward); first tokens for completed prompts."""
        for s in seqs:
            if s.slot is None:
                s.slot = self.cache.allocate()
                self.sampler.admit(s.slot, s)
                if s.params.prompt_logprobs is not None:
                    s.prompt_logprobs_out = [None]
            if s.prefill_to <= s.num_computed:
                s.prefill_to = len(s.prompt_ids)
        hidden = self._prefill_forward(seqs)  # [k, w, d]
        for i, s in enumerate(seqs):
            if s.params.prompt_logprobs is not None:  # row j of the chunk predicts prompt token start + j + 1
                targets = s.prompt_ids[s.num_computed + 1:s.prefill_to + 1]
                s.prompt_logprobs_out += prompt_logprobs(self.lm_head(hidden[i, :len(targets)]), targets,
                                                         s.params.prompt_logprobs)
        out: list[int | None] = [None] * len(seqs)
        done = [i for i, s in enumerate(seqs) if s.prefill_to >= len(s.prompt_ids)]
        if done:
            rows = torch.tensor(done, device=self.device)
            last = torch.tensor([seqs[i].prefill_to - seqs[i].num_computed - 1 for i in done], device=self.device)
            finished = [seqs[i] for i in done]
            slots = torch.tensor([s.slot for s in finished], device=self.device)
            tokens = self.sampler.sample(self.lm_head(hidden[rows, last]), slots, finished)
            self.ids[slots] = tokens
            self.pos[slots] = torch.tensor([len(s.prompt_ids) for s in finished], device=self.device)
            for i, t in zip(done, tokens.tolist()):
                out[i] = t
        for s in seqs:
            self.cache.lengths[s.slot] = s.num_computed = s.prefill_to
        return out

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One token for each running sequence (rows of the cache in [0, b), b a batch bucket)."""
        used = max(s.slot for s in seqs) + 1
        longest = max(self.cache.lengths[s.slot] for s in seqs) + 1  # keys to read, the new token's included
        b = next(x for x in self.batch_buckets if x >= used)
        kv = next(x for x in self.kv_buckets if x >= longest)
        logits, greedy = self._step(b, kv)
        if all(s.params.plain_greedy for s in seqs):
            row_tokens = greedy.tolist()
            tokens = [row_tokens[s.slot] for s in seqs]
        else:
            slots = torch.tensor([s.slot for s in seqs], device=self.device)
            picked = self.sampler.sample(logits[slots], slots, seqs)
            self.ids[slots] = picked
            tokens = picked.tolist()
        for s in seqs:
            self.cache.lengths[s.slot] += 1
        return tokens

    def remove(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            if s.slot is not None:
                self.cache.release(s.slot)
                self.pos[s.slot] = self.cache.trash
                s.slot = None

    # -- prefill ---------------------------------------------------------------------------------------------
    def _prefill_forward(self, seqs: list[Sequence]) -> torch.Tensor:
        """Last hidden states [k, w, d] of the chunks, their K/V written into the slots."""
        starts = [s.num_computed for s in seqs]
        chunks = [s.prompt_ids[s.num_computed:s.prefill_to] for s in seqs]
        width = max(len(c) for c in chunks)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # padding id 0: its K/V go to the trash column
        for i, c in enumerate(chunks):
            ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        ids = ids.to(self.device)
        start = torch.tensor(starts, device=self.device)[:, None]
        end = start + torch.tensor([len(c) for c in chunks], device=self.device)[:, None]  # [k, 1]
        positions = start + torch.arange(width, device=self.device)[None]  # [k, w]
        write = torch.where(positions < end, positions, self.cache.trash)
        kv_len = max(st + len(c) for st, c in zip(starts, chunks))  # keys the longest row attends to
        keys = self.key_range[:kv_len][None, None]  # [1, 1, L]
        mask = (keys <= positions[:, :, None]) & (keys < end[:, :, None])  # [k, w, L]
        attention.set_context(StepContext(self.cache.keys, self.cache.values, decode=False, kv_len=kv_len,
                                          slots=torch.tensor([s.slot for s in seqs], device=self.device),
                                          write_pos=write, mask=mask[:, None]))
        try:
            return self.decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        finally:
            attention.set_context(None)

    # -- decode ----------------------------------------------------------------------------------------------
    def _decode_forward(self, b: int, kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step for rows [0, b), keys [0, kv): logits [b, V] and greedy ids [b]; advances ids and positions.
        Everything here runs on the device, so it can be captured as one CUDA graph."""
        pos = self.pos[:b]
        mask = (self.key_range[:kv][None] <= pos[:, None])[:, None, None]  # [b, 1, 1, kv]
        attention.set_context(StepContext(self.cache.keys, self.cache.values, decode=True, positions=pos,
                                          rows=self.rows[:b], kv_len=kv, mask=mask))
        hidden = self.decoder(input_ids=self.ids[:b, None], position_ids=pos[:, None], use_cache=False).last_hidden_state
        logits = self.lm_head(hidden[:, -1])
        greedy = logits.argmax(dim=-1)
        self.ids[:b].copy_(greedy)
        self.pos[:b].copy_(torch.where(pos < self.cache.trash, pos + 1, pos))
        return logits, greedy

    def _step(self, b: int, kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.use_graphs:
            try:
                return self._decode_forward(b, kv)
            finally:
                attention.set_context(None)
        if (b, kv) not in self.graphs:
            self._capture(b, kv)
        if (b, kv) not in self.graphs:  # capture failed: eager from now on
            return self._step(b, kv)
        graph, out = self.graphs[(b, kv)]
        graph.replay()
        return out

    def _capture(self, b: int, kv: int) -> None:
        """Record the (b, kv) step. Rows [0, b) that no sequence holds sit at the trash position, so the warm-up
        runs that capture needs write only there; rows in use are left as they were."""
        saved_ids, saved_pos = self.ids.clone(), self.pos.clone()
        try:
            self.pos[:b] = self.cache.trash
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # lazy initialisation (workspaces, autotuning) happens here, not in the graph
                    self._decode_forward(b, kv)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._decode_forward(b, kv)
            self.graphs[(b, kv)] = (graph, out)
        except Exception as e:  # noqa: BLE001 - an uncapturable step (e.g. LLM.int8()) still runs, eagerly
            self.use_graphs = False
            self.graph_fallback = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            torch.cuda.synchronize(self.device)
        finally:
            attention.set_context(None)
            self.ids.copy_(saved_ids)
            self.pos.copy_(saved_pos)

    # -- warm-up ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def warmup(self, kv_limit: int | None = None) -> None:
        """Before the port opens: one prefill and decode (kernels load, allocator grows), and on CUDA every
        (batch, length) graph up to `kv_limit` keys captured, largest first, so no request pays for a capture."""
        ids = self.tokenizer("A short prompt to warm the model up.")["input_ids"] or [0]
        seqs = [Sequence(f"warmup-{n}", ids[:n], SamplingParams(max_tokens=2), 0.0)
                for n in (len(ids), max(1, len(ids) // 2))[:self.cache.slots]]
        self.prefill(seqs)
        self.decode(seqs)
        self.remove(seqs)
        if self.device.type == "cuda":
            self._warm_prefill_shapes(ids)
        if self.use_graphs:
            for kv in reversed([k for k in self.kv_buckets if kv_limit is None or k <= max(kv_limit, self.kv_buckets[0])]):
                for b in reversed(self.batch_buckets):
                    if self.use_graphs and (b, kv) not in self.graphs:
                        self._capture(b, kv)
            torch.cuda.synchronize(self.device)

    def _warm_prefill_shapes(self, ids: list[int]) -> None:
        """Prefill chunks of 16, 64, 256, 512 and 1,024 tokens, alone and four together: CUDA loads kernels lazily and
        cuBLAS picks them by shape, so the first long prompt would otherwise pay for that inside a serving step
        (a 696 ms step with a prefill under staggered arrivals, RESULTS.md)."""
        for width in (w for w in (16, 64, 256, 512, 1024) if w < self.max_context - 1):
            for k in sorted({1, min(4, self.cache.slots)}):
                prompt = (ids * (width // len(ids) + 1))[:width]
                seqs = [Sequence(f"warmup-{width}-{i}", prompt, SamplingParams(max_tokens=1), 0.0) for i in range(k)]
                self.prefill(seqs)
                self.remove(seqs)

    @property
    def graphed(self) -> bool:
        return self.use_graphs and bool(self.graphs)
