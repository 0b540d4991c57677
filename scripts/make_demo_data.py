"""Writes the demo's sample data: under DEMO_ROOT a small dataset, a SQLite database, papers and empty work
areas; with an S3 endpoint, the same dataset and a larger binary object into its bucket `demo`."""
import csv
import random
import sqlite3
import sys
from pathlib import Path

import botocore.session


def main(root: Path):
    links, archive = root / "links", root / "archive"
    datasets = links / "datasets"
    for directory in (datasets / "iris", datasets / "weather", links / "scratch", links / "shared", archive / "papers", root / "mnt"):
        directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    with open(datasets / "iris" / "iris.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
        for _ in range(150):
            writer.writerow([round(rng.uniform(4, 8), 1), round(rng.uniform(2, 4.5), 1), round(rng.uniform(1, 7), 1),
                             round(rng.uniform(0.1, 2.5), 1), rng.choice(["setosa", "versicolor", "virginica"])])
    database = datasets / "weather" / "readings.sqlite"
    database.unlink(missing_ok=True)
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE readings (day INTEGER, station TEXT, celsius REAL)")
        connection.executemany("INSERT INTO readings VALUES (?, ?, ?)",
                               [(day, station, round(rng.gauss(12, 6), 1)) for day in range(365) for station in ("north", "south")])
    (datasets / "README.txt").write_text("Sample data for the fsmount demo: iris/iris.csv and weather/readings.sqlite.\n")
    (archive / "papers" / "fsmount.txt").write_text("fsmount: one tree over S3, Azure, GCS, IPFS, URLs and host paths.\n")
    (links / "shared" / "notes.md").write_text("# Team notes\n\nWritable by the team, through the mount.\n")


def upload(root: Path, endpoint: str):
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo")
    try:
        client.create_bucket(Bucket="demo")
    except client.exceptions.BucketAlreadyOwnedByYou:  # a demo run before this one; its listing may lag
        pass
    datasets = root / "links" / "datasets"
    for path in sorted(datasets.rglob("*")):
        if path.is_file():
            client.put_object(Bucket="demo", Key=f"datasets/{path.relative_to(datasets)}", Body=path.read_bytes())
    client.put_object(Bucket="demo", Key="models/weights.bin", Body=random.Random(11).randbytes(24 * 2**20))
    client.put_object(Bucket="demo", Key="models/checkpoints/", Body=b"")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        upload(Path(sys.argv[1]), sys.argv[2])
