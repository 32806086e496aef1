"""The serial part of ``--mode=prepare``: how fast one process writes encoded images through TFDS's
ad-hoc builder (serialising, shuffling, ArrayRecord), whatever the number of encoding workers.

  python benchmarks/tfds_writer.py --dataset=rehearsal_256 --data_dir=/tmp/imagenet_rehearsal/tfds

Reads every record of the given prepared dataset's ``train`` split into memory (already encoded),
then times writing them as a new TFDS dataset in a temporary directory, in this process, as
prepare's main process does. Prints records/s and MB/s: prepare cannot go faster than this
however many cores encode.
"""

import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "A dataset written by --mode=prepare.")
flags.DEFINE_string("data_dir", None, "Its TFDS data_dir.")
flags.DEFINE_string("split", "train", "The split whose records are written again.")


def main(argv):
    del argv
    import ml_collections
    import tensorflow_datasets as tfds

    from alexnet_jax import datasets

    config = ml_collections.ConfigDict({"name": FLAGS.dataset, "data_dir": FLAGS.data_dir, "download": False})
    source = datasets.tfds_source(config, FLAGS.split, decoders={"image": tfds.decode.SkipDecoding()})
    records = source.__getitems__(list(range(len(source))))
    examples = [
        (str(i), {"image": r["image"], "label": int(r["label"]), "file_name": r["file_name"]})
        for i, r in enumerate(records)
    ]
    size = sum(len(r["image"]) for r in records)
    features = source.dataset_info.features
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        tfds.dataset_builders.store_as_tfds_dataset(
            name="writer_benchmark",
            version="1.0.0",
            features=features,
            split_datasets={FLAGS.split: examples},
            data_dir=out,
            file_format="array_record",
        )
        seconds = time.perf_counter() - started
        written = sum(p.stat().st_size for p in pathlib.Path(out).rglob("*") if p.is_file())
    print("| records | MB of images | seconds | records/s | MB/s | MB written |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(records):,} | {size / 1e6:,.1f} | {seconds:.2f} | {len(records) / seconds:,.0f} | "
        f"{size / 1e6 / seconds:,.1f} | {written / 1e6:,.1f} |"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["dataset", "data_dir"])
    app.run(main)
