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

# Many small pages in every layout pyarrow writes (v1 and v2 data pages, dictionary
# pages, page index, statistics): the page-header checks in `parquet_guard` must
# accept all of them.
import random
random.seed(0)
words = "the of and to a in is that for it as was with on by".split()
docs = [" ".join(random.choice(words) for _ in range(random.randint(1, 40))) + f" #{i}"
        for i in range(300)]
docs[7] = None
c = pa.table({"id": list(range(300)), "text": docs})
for page_version in ["1.0", "2.0"]:
    for dictionary in [True, False]:
        pq.write_table(
            c, f"pages/v{page_version}-{'dict' if dictionary else 'plain'}.parquet",
            compression="zstd", data_page_version=page_version, use_dictionary=dictionary,
            row_group_size=100, data_page_size=1024, write_statistics=True,
            write_page_index=True)
