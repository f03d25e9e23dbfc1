"""Writes the Parquet fixtures the way HF `datasets` does (pyarrow, row groups,
snappy by default). Run with any Python that has pyarrow; the outputs are committed."""
import pyarrow as pa
import pyarrow.parquet as pq

a = pa.table({
    "text": ["The first document.", "", None, "Le deuxième document, en UTF-8 : ça marche."],
    "id": [0, 1, 2, 3],
})
pq.write_table(a, "hf-dataset/data/train-00000-of-00002.parquet", compression="snappy", row_group_size=2)
b = pa.table({
    "text": ["A third document, compressed with zstd.", "And a fourth."],
    "id": [4, 5],
})
pq.write_table(b, "hf-dataset/data/train-00001-of-00002.parquet", compression="zstd")
