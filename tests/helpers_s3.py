"""A local S3 server (moto) on 127.0.0.1 for DVC remote tests."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

# moto accepts any credentials; these keep boto3 and DVC off real AWS configuration.
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_bucket(name: str) -> Iterator[str]:
    """Run moto on a free local port with one empty bucket; yield the endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
                     region_name=ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)
        yield endpoint
    finally:
        server.stop()
