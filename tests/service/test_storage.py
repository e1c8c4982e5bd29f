"""Both object stores behind one interface: the local folder and S3 over HTTP (SeaweedFS)."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from api.settings import DEFAULT_BACKBONE, Settings
from api.storage import LocalStore, ObjectNotFound, S3Store, make_store, tenant_key

from .servers import S3Server


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3Store(f"t-{uuid.uuid4().hex[:12]}", server.endpoint_url, server.access_key, server.secret_key)


def test_put_get_list_delete(any_store):
    tenant = uuid.uuid4()
    a, b = tenant_key(tenant, "concepts", "c1", "a.png"), tenant_key(tenant, "renders", "r1", "out.png")
    any_store.put_bytes(a, b"alpha", "image/png")
    any_store.put_bytes(b, b"beta")
    any_store.put_bytes(tenant_key(uuid.uuid4(), "x.bin"), b"other tenant")
    assert any_store.get_bytes(a) == b"alpha"
    assert any_store.exists(b) and not any_store.exists(a + ".missing")
    assert any_store.list_keys(str(tenant)) == sorted([a, b])
    any_store.put_bytes(a, b"alpha v2")  # overwrite
    assert any_store.get_bytes(a) == b"alpha v2"
    any_store.delete(a)
    with pytest.raises(ObjectNotFound):
        any_store.get_bytes(a)
    assert any_store.list_keys(f"{tenant}/concepts") == []


def test_keys_are_tenant_prefixed_plain_names():
    tenant = uuid.uuid4()
    assert tenant_key(tenant, "renders", "r1", "output.png") == f"{tenant}/renders/r1/output.png"
    for bad in ("..", "a/b", "", "x y"):
        with pytest.raises(ValueError):
            tenant_key(tenant, bad)


def test_local_store_refuses_keys_outside_its_folder(tmp_path):
    store = LocalStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        store.put_bytes("../escape.txt", b"x")


def test_s3_server_checks_signatures(s3_server):
    store = S3Store("sigcheck", s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
    store.put_bytes("t/k", b"v")
    wrong = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                         aws_secret_access_key="not-the-secret", region_name="us-east-1")
    with pytest.raises(ClientError):
        wrong.get_object(Bucket="sigcheck", Key="t/k")


def test_settings_choose_the_store(tmp_path, s3_server):
    local = Settings.from_env({"OMNI_DATA_DIR": str(tmp_path)})
    assert isinstance(make_store(local), LocalStore) and local.database_url.startswith("sqlite:///")
    assert local.broker_url.startswith("sqla+sqlite:///") and local.backbone == DEFAULT_BACKBONE
    assert Settings.from_env({"OMNI_DATA_DIR": str(tmp_path), "OMNI_BACKBONE": "toy"}).backbone == "toy"
    s3 = Settings.from_env({"OMNI_DATA_DIR": str(tmp_path), "S3_BUCKET": "chosen", "S3_ENDPOINT_URL":
                            s3_server.endpoint_url, "S3_ACCESS_KEY_ID": s3_server.access_key,
                            "S3_SECRET_ACCESS_KEY": s3_server.secret_key,
                            "DATABASE_URL": "postgresql://u@db/x"})
    store = make_store(s3)
    assert isinstance(store, S3Store) and store.bucket == "chosen"
    assert s3.database_url == "postgresql+psycopg://u@db/x"
    assert s3_server.secret_key not in repr(s3)  # secrets stay out of logs
