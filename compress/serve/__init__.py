"""`compress serve`: an OpenAI-compatible server over the tiers of a manifest.

Request path (one home per step):
  app.py (HTTP routes, errors; edge.py: body limit, read timeouts, log redaction) -> pipeline.py (the
  request's steps: auth, limits, route, SLO admission, cache in steps.py; dispatch.py tries the tiers;
  local.py shapes a local engine's answer, params.py maps a request to SamplingParams) -> router.py
  (model id -> tiers; `auto` by difficulty, or by learned.py's per-tier predicted success when the manifest names a router.json) -> engine.py
  (per-tier async front end: one queue per request, fed by one background engine loop thread; or, the
  default on a GPU, engine_proc.py: the same engine loop in a child process, fed and read over pipes) ->
  engine_core.py (one continuous-batching step: chunked prefill, joint decode, step bookkeeping; no model),
  with scheduler.py's Batcher (waiting queue, priorities, admission, queue bound); sequence.py holds a
  request's state, detokenize.py the incremental detokenizer; batcher.py re-exports the old names ->
  model_runner.py (the HF model over slots.py's KV cache in slots, attention.py's slot attention
  registered with transformers, the decode step replayed as CUDA graphs, sampling.py on the device).
Remote tiers go through remote.py instead of an engine. cache.py is the per-user response cache,
slo.py the SLO controller (tighter batching, smaller tiers, then shedding), protocol.py the
request/response types, metrics.py the Prometheus metrics; history.py, panels.py and dashboard.py
the /dashboard page, series.py the extra series its alerts need.
"""
