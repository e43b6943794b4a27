"""Writes JSONL documents (stdin) as a Parquet file (stdout) with pyarrow, as Hugging Face
datasets and datatrove do: the text in the column named by the first argument (default
`text`) beside an `id` column, snappy-compressed, in row groups of the second argument's
size (default 3, so that small files have several). The tests read what it writes."""

import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

column = sys.argv[1] if len(sys.argv) > 1 else "text"
row_group = int(sys.argv[2]) if len(sys.argv) > 2 else 3
texts = [json.loads(line)["text"] for line in sys.stdin if line.strip()]
table = pa.table({"id": list(range(len(texts))), column: texts})
out = io.BytesIO()
pq.write_table(table, out, row_group_size=row_group, compression="snappy")
sys.stdout.buffer.write(out.getvalue())
