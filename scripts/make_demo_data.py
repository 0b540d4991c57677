"""Writes the demo's sample data: under DEMO_ROOT a small dataset, a SQLite database, papers and empty work
areas; with the endpoints of the local S3, Azure and GCS servers, the same dataset into a bucket (container)
`demo` of each, and into S3 a larger binary object too."""
import csv
import random
import sqlite3
import sys
import urllib.parse
from pathlib import Path

import botocore.session
import urllib3
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

# Azurite's one account, with the key Azure's documentation publishes for it (conf/demo.conf has it too).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


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


def dataset(root: Path) -> dict[str, bytes]:
    datasets = root / "links" / "datasets"
    return {f"datasets/{path.relative_to(datasets)}": path.read_bytes()
            for path in sorted(datasets.rglob("*")) if path.is_file()}


def upload_s3(root: Path, endpoint: str):
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo")
    try:
        client.create_bucket(Bucket="demo")
    except client.exceptions.BucketAlreadyOwnedByYou:  # a demo run before this one; its listing may lag
        pass
    for key, data in dataset(root).items():
        client.put_object(Bucket="demo", Key=key, Body=data)
    client.put_object(Bucket="demo", Key="models/weights.bin", Body=random.Random(11).randbytes(24 * 2**20))
    client.put_object(Bucket="demo", Key="models/checkpoints/", Body=b"")


def upload_azure(root: Path, endpoint: str):
    container = BlobServiceClient(endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}) \
        .get_container_client("demo")
    try:
        container.create_container()
    except ResourceExistsError:
        pass
    for key, data in dataset(root).items():
        container.upload_blob(key, data, overwrite=True)


def upload_gcs(root: Path, endpoint: str):
    urllib3.request("POST", f"{endpoint}/storage/v1/b", json={"name": "demo"})  # 409 when it is there
    for key, data in dataset(root).items():
        url = f"{endpoint}/upload/storage/v1/b/demo/o?uploadType=media&name={urllib.parse.quote(key, safe='')}"
        response = urllib3.request("POST", url, body=data)
        if response.status != 200:
            sys.exit(f"make_demo_data: GCS upload of {key}: {response.status}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if len(sys.argv) > 4:
        upload_s3(Path(sys.argv[1]), sys.argv[2])
        upload_azure(Path(sys.argv[1]), sys.argv[3])
        upload_gcs(Path(sys.argv[1]), sys.argv[4])
