"""The official Skytells Python SDK (PyPI `skytells`), unchanged, against a real skygate server."""

import pytest
from skytells import SkytellsClient
from skytells.types.shared import SkytellsError


def client(s, key):
    return SkytellsClient(api_key=key, base_url=f"{s.url}/v1", timeout=60_000)


def test_models_list(skygate):
    models = client(skygate, skygate.live_key).models.list()
    assert isinstance(models, list)
    slugs = {m["namespace"] for m in models}
    assert {"echo", "sky-image", "countdown"} <= slugs
    assert all("input_schema" not in m for m in models)


def test_models_list_with_schemas(skygate):
    models = client(skygate, skygate.live_key).models.list(fields=["input_schema", "output_schema"])
    assert all(isinstance(m["input_schema"], dict) for m in models)


def test_model_get_singular_path(skygate):
    m = client(skygate, skygate.live_key).models.get("echo", fields=["input_schema"])
    assert m["namespace"] == "echo"
    assert m["input_schema"]["required"] == ["prompt"]


def test_unknown_model_maps_to_sdk_error(skygate):
    with pytest.raises(SkytellsError) as e:
        client(skygate, skygate.live_key).models.get("no-such-model")
    assert e.value.error_id == "MODEL_NOT_FOUND"
    assert e.value.http_status == 404


def test_bad_key_maps_to_unauthorized(skygate):
    bad = skygate.live_key[:-1] + ("a" if skygate.live_key[-1] != "a" else "b")
    with pytest.raises(SkytellsError) as e:
        client(skygate, bad).models.list()
    assert e.value.error_id == "UNAUTHORIZED"
    assert e.value.http_status == 401
    assert str(e.value)


def test_test_key_is_limited_to_test_models(skygate):
    c = client(skygate, skygate.test_key)
    slugs = {m["namespace"] for m in c.models.list()}
    assert "echo" in slugs and "sky-image" not in slugs
    with pytest.raises(SkytellsError) as e:
        c.models.get("sky-image")
    assert e.value.error_id == "FORBIDDEN"
    assert e.value.http_status == 403
