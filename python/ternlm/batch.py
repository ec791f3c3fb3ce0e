"""Batch jobs over many prompts or texts on Ray (the extra `pip install 'ternlm[ray]'`):

    texts = ternlm.batch.generate(["Once upon a time", ...], model=PATH, max_new_tokens=64)
    ternlm.batch.generate("prompts.jsonl", model=PATH, output="out.jsonl", actors=4, threads=4)
    ppl = ternlm.batch.perplexity(ray.data.read_parquet("s3://..."), model=PATH, column="text")

data: a list (of prompts: str, token ids, or a conversation [{"role", "content"}, ...],
which is rendered with the chat template; or of dicts holding `column`), a JSONL or
Parquet path (rows with `column`), or a Ray Data Dataset with `column`.

Each of `actors` Ray actors loads the model once (ternlm.load with threads,
max_sequences, weights, ...) and takes batches of `batch_size` rows; a batch's prompts go
to m.generate([...]) together, so the engine decodes them in one pass over the weights
(continuous batching, docs/ARCHITECTURE.md). Results come back in input order: a list,
or with output= a JSONL / Parquet file of {"id": row, "text": ...} ({"id", "perplexity",
"tokens"} for perplexity) rows, in order, written whole to a temporary name and renamed.

Failures and resuming (ternlm/ray/jobs.py): every row carries its id through the job. An
actor that dies is restarted by Ray and its batch run again; output is keyed by row id,
so no row is lost or written twice. With output=, each finished batch is first saved
under OUTPUT.parts/ (each file written and renamed); a job started again with the same
output skips the rows already there, and the folder is removed once OUTPUT is complete.
Greedy decoding (temperature 0, the default) gives every row the text a single process
gives it; with sampling and a seed, row i samples with seed + i, so a rerun row samples
the same.

progress: True draws a bar over the rows where a person watches; a function is called
as progress(rows_done, rows_in_job) after each batch. address: a Ray cluster to use when
this process is not connected yet (None starts Ray on this machine).
"""
from __future__ import annotations

GENERATE_DEFAULTS = dict(max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                         repetition_penalty=1.0, seed=None, stop=None)


def generate(data, model: str, *, column: str = "prompt", output: str | None = None, actors: int = 1,
             threads: int | None = 1, max_sequences: int | None = None, batch_size: int | None = None,
             max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None, stop=None,
             weights: str | None = None, head: str | None = None, context: int | None = None,
             kv_dtype: str = "f32", revision: str | None = None, progress=True, address: str | None = None):
    """The continuation of each row's prompt (see the module docstring): a list of str in
    input order, or the output path once written. Sampling options as Model.generate's."""
    from .ray.jobs import Job
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
    job = Job("generate", model, column, sampling, actors=actors, threads=threads, max_sequences=max_sequences,
              batch_size=batch_size, weights=weights, head=head, context=context, kv_dtype=kv_dtype,
              revision=revision, address=address)
    return job.run(data, output, progress)


def perplexity(data, model: str, *, column: str = "text", window: int | None = None, stride: int | None = None,
               output: str | None = None, actors: int = 1, threads: int | None = 1, batch_size: int | None = None,
               weights: str | None = None, head: str | None = None, context: int | None = None,
               kv_dtype: str = "f32", revision: str | None = None, progress=True, address: str | None = None):
    """Model.perplexity(text, window, stride) of each row's text: a list of float in input
    order, or the output path once written (rows {"id", "perplexity", "tokens"})."""
    from .ray.jobs import Job
    job = Job("perplexity", model, column, {"window": window, "stride": stride}, actors=actors, threads=threads,
              max_sequences=None, batch_size=batch_size, weights=weights, head=head, context=context,
              kv_dtype=kv_dtype, revision=revision, address=address)
    return job.run(data, output, progress)
