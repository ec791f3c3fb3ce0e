"""The batch jobs behind ternlm.batch (whose docstring is the user's view): rows with ids,
Ray Data actors that each hold one model, and output written so that a job survives the
loss of an actor, and of the driver.

    data ──> Dataset of (ROW, column)            list: from_items; path / Dataset: zipped
       │                                         with range(n), so ROW = input position
       ├─ rows already in OUTPUT.parts/ dropped (a resumed job)
       ▼
    map_batches(_Worker, ActorPoolStrategy(actors), num_cpus=threads)
       │   each actor: ternlm.load once; per batch m.generate([...]) (one engine pass per
       │   step for the whole batch) or m.perplexity per text -> (ROW, result) columns
       │   Ray Data restarts an actor that dies and runs its batch again (its defaults:
       │   max_restarts=-1, max_task_retries=-1): a batch's output comes from one attempt
       ▼
    driver: iter_batches ──> results keyed by ROW (a row seen twice counts once)
       ├─ output=None: the list in input order
       └─ output=PATH: each batch saved as OUTPUT.parts/rows-*.jsonl (temp + rename), then
          all rows, ordered, to PATH (temp + rename), and the parts folder removed

OUTPUT.parts/job.json records what the job was (kind, model, column, rows, options); a job
that finds a parts folder of another job refuses to mix them.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import uuid

import numpy as np

from . import init

ROW = "_ternlm_row"            # the row id column (input position)
JSON = "_ternlm_json"          # a list's values, JSON-encoded (any mix of prompts fits one column)
RESULT_FIELDS = {"generate": ("text",), "perplexity": ("perplexity", "tokens")}


def _check_int(name, v, lo=1, none=False):
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}{' or None' if none else ''}, got {v!r}")


class Job:
    def __init__(self, kind, model, column, options, *, actors, threads, max_sequences, batch_size, weights, head,
                 context, kv_dtype, revision, address):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a path or a Hub id (a non-empty str), got {model!r}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"column must be a column name (str), got {column!r}")
        _check_int("actors", actors)
        _check_int("threads", threads, none=True)
        _check_int("max_sequences", max_sequences, none=True)
        _check_int("batch_size", batch_size, none=True)
        self.kind, self.model, self.column, self.options = kind, model, column, dict(options)
        self.actors, self.threads, self.address = int(actors), threads, address
        self.load_options = {"threads": threads, "weights": weights, "head": head, "context": context,
                             "kv_dtype": kv_dtype, "revision": revision}
        if max_sequences is not None:
            self.load_options["max_sequences"] = max_sequences
        # a generate batch fills the model's sequences twice over: while one finishes, the next starts
        self.batch_size = batch_size or (2 * (max_sequences or 8) if kind == "generate" else 4)

    # ---- input --------------------------------------------------------------------------------
    def _dataset(self, ray, data):
        """(Dataset with columns ROW and the prompt column, its row count, column name)."""
        import ray.data
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("data is an empty list: nothing to do")
            values = [d[self.column] if isinstance(d, dict) and self.column in d else d for d in data]
            for i, (d, v) in enumerate(zip(data, values)):
                if isinstance(d, dict) and v is d:
                    raise ValueError(f"data[{i}]: a dict without the column {self.column!r} (column= names it)")
            items = [{ROW: i, JSON: json.dumps(v)} for i, v in enumerate(values)]
            return ray.data.from_items(items), len(items), JSON
        if isinstance(data, (str, os.PathLike)):
            table, column = self._read_file(os.fspath(data))
            import pyarrow as pa
            table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
            return ray.data.from_arrow(table), table.num_rows, column
        if not isinstance(data, ray.data.Dataset):
            raise TypeError(f"data must be a list, a .jsonl / .parquet path or a ray.data.Dataset, "
                            f"got {type(data).__name__}")
        columns = data.columns() or []
        if self.column not in columns:
            raise ValueError(f"the dataset has no column {self.column!r} (its columns: {', '.join(columns)}); "
                             f"column= names the one holding the {self._what()}")
        n = data.count()
        if n == 0:
            raise ValueError("the dataset has no rows: nothing to do")
        # Row ids by position: the dataset zipped with range(n), in the order Ray Data
        # produces its rows with preserve_order (set while the job runs).
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ids = ray.data.range(n).rename_columns({"id": ROW})
            return data.select_columns([self.column]).zip(ids), n, self.column

    def _what(self):
        return "prompts" if self.kind == "generate" else "texts"

    def _read_file(self, path):
        """(pyarrow table, column name): the prompt column of a JSONL or Parquet file, in
        file order (read here, so a row's id is its position in the file)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (data: a list, a .jsonl or .parquet path, or a "
                                    f"Ray Dataset)")
        import pyarrow as pa
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            names = pq.read_schema(path).names
            if self.column not in names:
                raise ValueError(f"{path}: no column {self.column!r} (its columns: {', '.join(names)}); column= "
                                 f"names the one holding the {self._what()}")
            table, column = pq.read_table(path, columns=[self.column]), self.column
        elif path.endswith((".jsonl", ".json")):
            values = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
                    if not isinstance(obj, dict) or self.column not in obj:
                        raise ValueError(f"{path}:{n}: expected a JSON object with the key {self.column!r} "
                                         f"(column= names it)")
                    values.append(json.dumps(obj[self.column]))
            table, column = pa.table({JSON: pa.array(values, pa.string())}), JSON
        else:
            raise ValueError(f"{path}: expected a .jsonl (one JSON object per line) or a .parquet file")
        if table.num_rows == 0:
            raise ValueError(f"{path}: no rows: nothing to do")
        return table, column

    # ---- the run --------------------------------------------------------------------------------
    def run(self, data, output, progress):
        ray = init(self.address)
        from ray.data import ActorPoolStrategy, DataContext

        from ..progress import progress_bar
        ds, total, column = self._dataset(ray, data)
        parts = _Parts(output, self._manifest(total)) if output is not None else None
        results = parts.load() if parts is not None else {}
        todo = total - len(results)
        if todo:
            if results:
                from ray.data.expressions import col
                ds = ds.filter(expr=col(ROW).not_in(sorted(results)))
            mapped = ds.map_batches(
                _Worker, batch_size=self.batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=self.actors),
                num_cpus=float(self.threads or 1),
                fn_constructor_kwargs=dict(kind=self.kind, model=self.model, load_options=self.load_options,
                                           column=column, options=self.options))
            ctx = DataContext.get_current()
            saved = ctx.enable_progress_bars, ctx.execution_options.preserve_order
            ctx.enable_progress_bars = False          # ternlm's bar (or callback) counts rows
            ctx.execution_options.preserve_order = True     # a Dataset's row ids are positions
            bar = progress_bar(total=todo, enabled=progress is True, delay=1.0, unit="row", desc=f"batch {self.kind}")
            done = 0
            try:
                batches = mapped.iter_batches(batch_size=None, batch_format="numpy")
                for batch in _actor_errors_named(batches, ray, self.kind, self.model):
                    records = {}
                    for i, row in enumerate(batch[ROW]):
                        row = int(row)
                        if row not in results:
                            records[row] = {f: _plain(batch[f][i]) for f in RESULT_FIELDS[self.kind]}
                    if parts is not None and records:
                        parts.save(records)
                    results.update(records)
                    done += len(records)
                    bar.update(len(records))
                    if callable(progress):
                        progress(done, todo)
            finally:
                ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved
                bar.close()
        missing = [i for i in range(total) if i not in results]
        if missing:      # not expected: Ray retries until every batch has run once
            raise RuntimeError(f"batch {self.kind}: {len(missing)} of {total} rows have no result "
                               f"(first: row {missing[0]})")
        if parts is not None:
            return parts.finish(results, total, self.kind)
        field = RESULT_FIELDS[self.kind][0]
        return [results[i][field] for i in range(total)]

    def _manifest(self, total):
        return {"kind": self.kind, "model": self.model, "column": self.column, "rows": total,
                "options": self.options, "load_options": self.load_options}


def _actor_errors_named(batches, ray, kind, model):
    """The batches; an actor that could not even start (the model not found on its node,
    say) as a RuntimeError ending with its exception's line, instead of Ray's report."""
    try:
        yield from batches
    except ray.exceptions.RayActorError as e:
        if not getattr(e, "actor_init_failed", False):
            raise
        lines = [ln.strip() for ln in str(e).splitlines()]
        cause = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)), lines[-1])
        raise RuntimeError(f"batch {kind}: an actor could not load the model {model!r}: {cause}") from None


def _plain(v):
    """A numpy scalar as the Python value json writes."""
    return v.item() if isinstance(v, np.generic) else v


# ---- the actors ------------------------------------------------------------------------------------
class _Worker:
    """One Ray Data actor: one model, loaded once; each call runs one batch of rows."""

    def __init__(self, kind, model, load_options, column, options):
        import ternlm
        self.model = ternlm.load(model, progress=False, **load_options)
        self.kind, self.column, self.options = kind, column, options

    def _value(self, v):
        if self.column == JSON:
            v = json.loads(v)
        if isinstance(v, np.ndarray):
            v = v.tolist()
        return v

    def _prompt(self, v):
        """A str or token ids as they are; a conversation rendered with the chat template
        (token ids, special tokens written by the template, as Model.chat does)."""
        if isinstance(v, (list, tuple)) and v and all(isinstance(m, dict) for m in v):
            text = self.model.tokenizer.apply_chat_template(list(v), add_generation_prompt=True)
            return self.model.tokenizer.encode(text, add_special_tokens=False)
        return v

    def __call__(self, batch):
        rows = batch[ROW]
        values = [self._value(v) for v in batch[self.column]]
        if self.kind == "perplexity":
            ppl, tokens = [], []
            for v in values:
                ids = self.model.tokenizer.encode(v) if isinstance(v, str) else list(v)
                tokens.append(len(ids))
                ppl.append(self.model.perplexity(ids, window=self.options["window"], stride=self.options["stride"],
                                                 progress=False))
            return {ROW: rows, "perplexity": np.asarray(ppl, dtype=np.float64), "tokens": np.asarray(tokens)}
        prompts = [self._prompt(v) for v in values]
        opts = dict(self.options)
        seed = opts.pop("seed")
        if seed is None or opts["temperature"] == 0:
            texts = self.model.generate(prompts, **opts)
        else:
            # row i samples with seed + i (a rerun batch samples the same); the threads'
            # generations still decode together on the engine thread
            with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
                texts = list(pool.map(lambda p, r: self.model.generate(p, seed=(seed + int(r)) % 2**63, **opts),
                                      prompts, rows))
        return {ROW: rows, "text": np.asarray(texts, dtype=object)}


# ---- output ------------------------------------------------------------------------------------------
def _write_replace(path, write):
    """write(file) to a temporary name beside path, then rename it into place."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


class _Parts:
    """OUTPUT.parts/: job.json, and one rows-FIRST-RANDOM.jsonl per finished batch."""

    def __init__(self, output, manifest):
        self.output = os.fspath(output)
        if os.path.isdir(self.output):
            raise ValueError(f"output {self.output} is a folder; give a .jsonl or .parquet file path")
        parent = os.path.dirname(os.path.abspath(self.output))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output {self.output}: the folder {parent} does not exist")
        self.folder = self.output + ".parts"
        self.manifest = manifest
        os.makedirs(self.folder, exist_ok=True)
        job = os.path.join(self.folder, "job.json")
        if os.path.exists(job):
            with open(job, encoding="utf-8") as f:
                found = json.load(f)
            if found != json.loads(json.dumps(manifest)):
                raise ValueError(f"{self.folder} holds the partial output of another job ({found}); remove it "
                                 f"to start this one, or rerun that job to finish it")
        else:
            _write_replace(job, lambda p: _write_json(p, manifest))

    def load(self) -> dict:
        """Rows saved by earlier runs of this job: {row: record}."""
        done = {}
        for name in sorted(os.listdir(self.folder)):
            if name.startswith("rows-") and name.endswith(".jsonl"):
                with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                    for line in f:
                        rec = json.loads(line)
                        done.setdefault(rec.pop("id"), rec)
        return done

    def save(self, records: dict):
        name = f"rows-{min(records):012d}-{uuid.uuid4().hex[:8]}.jsonl"
        _write_replace(os.path.join(self.folder, name),
                       lambda p: _write_jsonl(p, ({"id": r, **records[r]} for r in sorted(records))))

    def finish(self, results: dict, total: int, kind: str) -> str:
        rows = [{"id": i, **results[i]} for i in range(total)]
        if self.output.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq
            table = pa.table({k: [r[k] for r in rows] for k in ("id", *RESULT_FIELDS[kind])})
            _write_replace(self.output, lambda p: pq.write_table(table, p))
        else:
            _write_replace(self.output, lambda p: _write_jsonl(p, rows))
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.output
