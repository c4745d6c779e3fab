"""Signed URLs for browsers (issue 10): web and workers reach S3 at an internal address, browsers at
AWS_S3_PUBLIC_URL. SigV4 signs the Host header, so the URL must be signed for the public host.

The public address here is a TCP proxy of our own in front of moto's server, as a TLS proxy stands in
front of MinIO. Moto does not check signatures, so each URL's signature is also checked here against
the host it must have been made for."""

import functools
import hashlib
import hmac
import uuid
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests

from gallery import storage
from tests.conftest import BUCKET
from tests.faults.harness import TcpProxy
from tests.test_settings import assert_refused_naming, start

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def signed_for(url: str, host: str, secret: str = "test") -> bool:
    """Whether the URL's SigV4 query signature is right for a request to `host` (AWS's published steps)."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    assert params["X-Amz-SignedHeaders"] == "host"
    encode = functools.partial(quote, safe="-_.~")
    canonical = "\n".join(["GET", parts.path, "&".join(f"{encode(k)}={encode(v)}" for k, v in sorted(params.items())),
                           f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)


@pytest.fixture
def public_address(s3_endpoint):
    """A second address for moto's server, as browsers would reach storage through a proxy."""
    internal = urlsplit(s3_endpoint)
    proxy = TcpProxy(internal.hostname, internal.port)
    proxy.up()
    yield proxy
    proxy.down()


@pytest.fixture
def stored_key():
    key = f"tests/public-url/{uuid.uuid4()}.png"
    storage.put(key, PNG)
    yield key
    storage.delete([key])


def test_a_browser_gets_a_url_on_the_public_address_that_fetches_the_file(settings, public_address, stored_key):
    # given web reaching S3 at moto's own address and browsers at the proxy's
    settings.AWS_S3_PUBLIC_URL = public_address.url

    # when a browser asks for the file
    location = storage.serve(stored_key)["Location"]

    # then it is sent to the public address, by path, and gets the bytes there
    assert location.startswith(f"{public_address.url}/{BUCKET}/{stored_key}?")
    response = requests.get(location, timeout=10)
    assert response.status_code == 200 and response.content == PNG


def test_the_url_is_signed_for_the_public_host_not_rewritten_from_the_internal_one(settings, s3_endpoint,
                                                                                   public_address, stored_key):
    settings.AWS_S3_PUBLIC_URL = public_address.url

    location = storage.serve(stored_key)["Location"]

    assert signed_for(location, urlsplit(public_address.url).netloc)
    assert not signed_for(location, urlsplit(s3_endpoint).netloc)


def test_without_a_public_address_urls_use_the_endpoint(settings, s3_endpoint, stored_key):
    settings.AWS_S3_PUBLIC_URL = ""

    location = storage.serve(stored_key)["Location"]

    assert location.startswith(f"{s3_endpoint}/{BUCKET}/{stored_key}?")
    assert signed_for(location, urlsplit(s3_endpoint).netloc)
    assert requests.get(location, timeout=10).content == PNG


def test_a_share_links_short_lived_url_is_on_the_public_address_too(settings, public_address, stored_key):
    settings.AWS_S3_PUBLIC_URL = public_address.url

    response = storage.serve(stored_key, expires=60)

    query = dict(parse_qsl(urlsplit(response["Location"]).query))
    assert response["Location"].startswith(f"{public_address.url}/{BUCKET}/")
    assert query["X-Amz-Expires"] == "60" and response["Cache-Control"] == "no-store"


def test_a_public_host_name_keeps_the_bucket_in_the_path(settings, stored_key):
    # given a public address that is a DNS name, where S3 clients may put the bucket in the host name
    settings.AWS_S3_PUBLIC_URL = "https://files.studio.example"

    location = storage.serve(stored_key)["Location"]

    # then the proxy's one host name serves the bucket, by path, and the URL is signed for that host
    assert location.startswith(f"https://files.studio.example/{BUCKET}/{stored_key}?")
    assert signed_for(location, "files.studio.example")


SHOW_URL = ("import django; django.setup(); from django.conf import settings; from gallery import storage; "
            "print(settings.AWS_S3_ADDRESSING_STYLE, storage.serve('generations/x/0.png')['Location'])")
STORAGE = {"AWS_STORAGE_BUCKET_NAME": "qwenstudio", "AWS_ACCESS_KEY_ID": "studio"}


def test_the_compose_endpoint_is_reached_by_path():
    # given the compose file's internal endpoint, a host name that has no per-bucket names
    process = start(SHOW_URL, AWS_S3_ENDPOINT_URL="http://minio:9000", **STORAGE)

    assert process.returncode == 0, process.stderr
    style, url = process.stdout.split()
    assert style == "path" and url.startswith("http://minio:9000/qwenstudio/generations/x/0.png?")


def test_aws_itself_keeps_botos_choice_and_oss_can_ask_for_virtual_hosts():
    aws = start(SHOW_URL, **STORAGE)
    oss = start(SHOW_URL, AWS_S3_ENDPOINT_URL="https://oss-cn-hangzhou.aliyuncs.com", AWS_S3_ADDRESSING_STYLE="virtual",
                **STORAGE)

    assert aws.returncode == 0 and oss.returncode == 0, aws.stderr + oss.stderr
    assert aws.stdout.split()[0] == "auto"
    assert oss.stdout.split()[1].startswith("https://qwenstudio.oss-cn-hangzhou.aliyuncs.com/generations/x/0.png?")


@pytest.mark.parametrize("value", ["files.studio.example", "https://files.studio.example/images", "ftp://files.example",
                                   "https://files.studio.example:port", "https://files.studio.example/?x=1"])
def test_a_public_address_that_is_not_an_origin_stops_start_up_naming_it(value):
    assert_refused_naming(start(AWS_S3_PUBLIC_URL=value), "AWS_S3_PUBLIC_URL")


def test_a_public_address_with_credentials_is_refused_without_printing_them():
    process = start(AWS_S3_PUBLIC_URL="https://studio:hunter2-canary@files.studio.example")

    assert_refused_naming(process, "AWS_S3_PUBLIC_URL")
    assert "hunter2-canary" not in process.stdout + process.stderr


def test_an_unknown_addressing_style_stops_start_up_naming_it():
    assert_refused_naming(start(AWS_S3_ADDRESSING_STYLE="sideways"), "AWS_S3_ADDRESSING_STYLE")
