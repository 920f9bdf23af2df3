"""The official Skytells Python SDK (PyPI `skytells` 1.0.0), unchanged, running predictions against a real
skygate server over TLS: create, run (await), get, list, wait, stream_prediction, cancel, delete, and the
failure and error paths, as an SDK user writes them."""

import ssl
import time
import urllib.error
import urllib.request

import pytest
from skytells import SkytellsClient
from skytells.types.shared import SkytellsError


def client(s, key=None):
    return SkytellsClient(api_key=key or s.live_key, base_url=f"{s.url}/v1", timeout=60_000)


def download(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_run_awaits_a_text_model(skygate):
    p = client(skygate).run("sky-text", input={"prompt": "hello skygate", "mode": "upper"})
    assert p.status == "succeeded"
    assert p.output == "HELLO SKYGATE"
    raw = p.raw()
    assert raw["type"] == "inference" and raw["source"] == "api"
    assert raw["metrics"]["progress"] == 100
    assert raw["urls"]["get"].startswith(skygate.url + "/v1/predictions/")


def test_run_an_image_model_and_download_the_output(skygate):
    p = client(skygate).run("sky-image", input={"prompt": "a lighthouse", "width": 32, "height": 32, "steps": 2})
    assert p.status == "succeeded"
    url = p.outputs()
    assert isinstance(url, str) and "/v1/outputs/" in url and "sig=" in url
    status, ctype, body = download(url, skygate.ca)
    assert status == 200 and ctype == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")
    files = p.raw()["metadata"]["storage"]["files"]
    assert files[0]["size"] == len(body) and files[0]["type"] == "image/png"


def test_create_then_get_wait_and_list(skygate):
    c = client(skygate)
    created = c.predictions.create({"model": "echo", "input": {"prompt": "queued", "repeat": 2}})
    assert created["status"] in ("pending", "starting", "processing", "succeeded")
    done = c.wait(created, {"interval": 100, "max_wait": 30_000})
    assert done["status"] == "succeeded" and done["output"] == "queued\nqueued"
    got = c.predictions.get(created["id"])
    assert got["id"] == created["id"] and got["output"] == "queued\nqueued"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    page = c.predictions.list(page=1, since=today, until=today, model="echo")
    assert created["id"] in [d["id"] for d in page.data]
    assert page.pagination.to_dict()["current_page"] == 1
    assert c.stream_prediction(created["id"])["id"] == created["id"]


def test_cancel_a_running_prediction(skygate):
    c = client(skygate)
    created = c.predictions.create({"model": "countdown", "input": {"seconds": 60}})
    deadline = time.monotonic() + 20
    while c.predictions.get(created["id"])["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = c.cancel_prediction(created["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(SkytellsError) as e:
        c.cancel_prediction(created["id"])
    assert e.value.error_id == "PREDICTION_NOT_CANCELLABLE"


def test_delete_destroys_and_then_is_not_found(skygate):
    c = client(skygate)
    p = c.run("sky-image", input={"prompt": "to delete", "width": 16, "height": 16, "steps": 1})
    url = p.outputs()
    assert p.delete() == {"success": True}
    with pytest.raises(SkytellsError) as e:
        c.predictions.get(p.id)
    assert e.value.error_id == "PREDICTION_NOT_FOUND" and e.value.http_status == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        download(url, skygate.ca)
    assert e.value.code == 404
    with pytest.raises(SkytellsError):
        c.delete_prediction(p.id)


def test_a_failed_prediction_raises_with_its_message(skygate):
    with pytest.raises(SkytellsError) as e:
        client(skygate).run("fail", input={"mode": "error", "message": "no GPUs today"})
    assert "no GPUs today" in str(e.value)
    assert e.value.error_id == "PREDICTION_FAILED"


def test_invalid_input_maps_to_sdk_error(skygate):
    with pytest.raises(SkytellsError) as e:
        client(skygate).run("sky-image", input={"prompt": "x", "width": "wide"})
    assert e.value.error_id == "INVALID_INPUT" and e.value.http_status == 422
    assert "width" in e.value.details


def test_test_keys_run_test_models_only(skygate):
    c = client(skygate, skygate.test_key)
    assert c.run("echo", input={"prompt": "t"}).output == "t"
    with pytest.raises(SkytellsError) as e:
        c.run("sky-image", input={"prompt": "x"})
    assert e.value.http_status == 403
    # Live predictions are invisible to test keys.
    live = client(skygate).run("echo", input={"prompt": "live"})
    with pytest.raises(SkytellsError) as e:
        c.predictions.get(live.id)
    assert e.value.http_status == 404
