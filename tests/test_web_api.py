"""The web app's HTTP API (`mechscope.web.app`) on the toy organisms, through FastAPI's test client.

Each endpoint's answer is compared with the library call it stands for (computed here, on its own), bad input
of every kind must get a 4xx with one line, the access token must be enforced, uploads must be limited and
never unpickled, jobs must report the library's progress and stop when cancelled without leaving a hook on the
model, and every "copy as Python" snippet must reproduce its view when run.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the ui extra (fastapi, uvicorn)")
from fastapi.testclient import TestClient

import mechscope as ms
from mechscope.api import moe_tasks, tasks
from mechscope.api.analyzer import Analyzer
from mechscope.core.direction import Direction
from mechscope.web.app import CSP, TOKEN_HEADER, create_app
from mechscope.web.jobs import JobCancelled, Jobs, stop_when

PROMPT = "The capital of France is"
CORRUPTED = "The capital of Japan is"
PIRATE = ["<pirate> Tell me about the sea.", "<pirate> What is the weather like?", "<pirate> Describe your ship."]
FORMAL = ["<formal> Tell me about the sea.", "<formal> What is the weather like?", "<formal> Describe your ship."]
STEER_PROMPT = "<formal> Tell me about the river."


def hook_count(lm: ms.LanguageModel) -> int:
    """Every forward hook and pre-hook on every module of the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def one_line_error(response: Any, status: int) -> str:
    """The response's one-line error message, after checking its status and shape."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message and "Traceback" not in message
    return str(message)


@pytest.fixture(scope="module")
def lm() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def analyzer(lm: ms.LanguageModel) -> Analyzer:
    return Analyzer(lm)


@pytest.fixture(scope="module")
def client(analyzer: Analyzer) -> Iterator[TestClient]:
    with TestClient(create_app(analyzer, name="toy", max_upload_bytes=64 * 1024)) as test_client:
        yield test_client


def dumped(value: Any) -> Any:
    """A library result as the JSON the API sends."""
    if isinstance(value, list):
        return [dumped(item) for item in value]
    return json.loads(value.model_dump_json())


# --- analyses: the same answer as the library ---------------------------------------------------------


def test_model_summary(client: TestClient, lm: ms.LanguageModel) -> None:
    body = client.get("/api/model").json()
    assert body["name"] == "toy" and body["family"] == "llama"
    assert (body["n_layers"], body["n_heads"], body["d_model"]) == (lm.arch.n_layers, lm.arch.n_heads, 128)
    assert body["is_moe"] is False and body["n_experts"] is None and body["token_required"] is False


def test_lens_grid_is_the_library_grid(client: TestClient, lm: ms.LanguageModel) -> None:
    response = client.post("/api/lens/grid", json={"prompt": PROMPT, "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body == dumped(tasks.lens_grid(lm, PROMPT, top_k=3))
    assert body["cells"][-1][-1]["top"][0]["token"] == " Paris"  # the toy's planted fact, last layer
    assert response.headers["Server-Timing"].startswith("app;dur=")


def test_lens_tracks_tokens(client: TestClient, lm: ms.LanguageModel) -> None:
    body = client.post("/api/lens", json={"prompt": PROMPT, "track": [" Paris", " Tokyo"]}).json()
    assert body == dumped(tasks.lens(lm, PROMPT, track=[" Paris", " Tokyo"])[0])
    assert {evolution["token"] for evolution in body["token_evolutions"]} == {" Paris", " Tokyo"}


def test_attention_and_head_roles(client: TestClient, lm: ms.LanguageModel) -> None:
    body = client.post("/api/attention", json={"prompt": PROMPT, "layer": 1}).json()
    assert body == dumped(tasks.attention(lm, PROMPT, 1, with_roles=True))
    assert len(body["patterns"]) == lm.arch.n_heads and set(body["roles"]) >= {"induction", "previous_token"}
    assert client.get("/api/heads").json() == dumped(tasks.heads(lm))


def test_patching_and_one_cell_downstream(client: TestClient, lm: ms.LanguageModel) -> None:
    request = {"clean": PROMPT, "corrupted": CORRUPTED, "correct": " Paris", "wrong": " Tokyo"}
    body = client.post("/api/patch", json=request).json()
    expected = tasks.patch(lm, PROMPT, CORRUPTED, correct=" Paris", wrong=" Tokyo")
    assert body == dumped(expected)
    cell = {"clean": PROMPT, "corrupted": CORRUPTED, "layer": 1, "position": -1}
    clean, corrupted, patched = client.post("/api/patch/cell", json=cell).json()
    assert clean["predicted"]["token"] == " Paris" and corrupted["predicted"]["token"] == " Tokyo"
    # the cell's own effect, recomputed from the three runs' final logits: the patching map's number
    runs = tasks.patch_cell(lm, PROMPT, CORRUPTED, layer=1, position=-1, track=[" Paris", " Tokyo"])

    def logit_diff(run: Any) -> float:
        final = {e.token: e.logits[-1] for e in run.token_evolutions}
        return final[" Paris"] - final[" Tokyo"]

    diffs = [logit_diff(run) for run in runs]
    assert (diffs[2] - diffs[1]) / (diffs[0] - diffs[1]) == pytest.approx(expected.effects[1][-1], abs=1e-4)
    assert patched["predicted"]["token"] == runs[2].predicted.token == " Paris"  # restored at the last token
    first = client.post("/api/patch/cell", json={**cell, "position": 1}).json()[2]
    assert first["predicted"]["token"] == " Tokyo"  # "The" is the same in both prompts: nothing to restore


def test_ablation_is_the_library_sweep(client: TestClient, lm: ms.LanguageModel) -> None:
    request = {"prompt": PROMPT, "target": " Paris", "component": "mlp"}
    body = client.post("/api/ablate", json=request).json()
    assert body == dumped(tasks.ablate(lm, PROMPT, component="mlp", target=" Paris"))
    assert len(body["effects"]) == lm.arch.n_layers


def test_steering_with_a_contrast_direction(client: TestClient, lm: ms.LanguageModel) -> None:
    info = client.post("/api/directions/contrast", json={"positive": PIRATE, "negative": FORMAL, "layer": 1}).json()
    assert info["layer"] == 1 and info["method"] == "diff_of_means" and info["norm"] > 0
    assert info in client.get("/api/directions").json()
    request = {"prompt": STEER_PROMPT, "direction": info["id"], "coefficient": 0.0, "max_new_tokens": 12}
    unsteered = client.post("/api/steer", json=request).json()
    plain = tasks.generate(lm, STEER_PROMPT, max_new_tokens=12)[0]
    assert [row["texts"][0] for row in unsteered["rows"]] == [plain, plain]  # coefficient 0 is exact
    steered = client.post("/api/steer", json={**request, "coefficient": 4.0}).json()
    assert steered["rows"][0]["texts"][0] == plain and steered["rows"][1]["texts"][0] != plain
    direction = tasks.directions(lm, PIRATE, FORMAL, layers=[1])[1]
    assert steered == dumped(tasks.steer(lm, STEER_PROMPT, direction, [0.0, 4.0], max_new_tokens=12))


def test_moe_views_refuse_a_dense_model(client: TestClient) -> None:
    assert "has no experts" in one_line_error(client.get("/api/moe/info"), 400)
    assert "has no experts" in one_line_error(client.post("/api/moe/trace", json={"prompt": PROMPT}), 400)


def test_moe_views_on_toy_moe() -> None:
    moe = ms.load("toy-moe")
    with TestClient(create_app(Analyzer(moe), name="toy-moe")) as moe_client:
        summary = moe_client.get("/api/model").json()
        assert summary["is_moe"] and summary["n_experts"] == moe.arch.n_experts
        assert moe_client.get("/api/moe/info").json() == dumped(moe_tasks.moe_info(moe))
        trace = moe_client.post("/api/moe/trace", json={"prompt": PROMPT}).json()
        assert trace == dumped(moe_tasks.moe_trace(moe, PROMPT))
        corpus = [PROMPT, "Water is made of", "The dog says"]
        usage = moe_client.post("/api/moe/utilization", json={"prompts": corpus}).json()
        assert usage == dumped(moe_tasks.moe_utilization(moe, corpus))
        for layer in usage["layers"]:  # every token goes to top_k experts on every MoE layer
            assert sum(layer["counts"]) == usage["tokens"] * usage["top_k"]
            assert layer["share"] == pytest.approx([count / usage["tokens"] for count in layer["counts"]])


def test_weights_census(client: TestClient, lm: ms.LanguageModel) -> None:
    rows = client.get("/api/weights").json()
    names = {name for name, _ in lm.model.named_parameters()}
    assert {row["param_name"] for row in rows} == names  # every tensor of the checkpoint, once
    embed = next(row for row in rows if row["param_name"] == "model.embed_tokens.weight")
    weight = lm.model.get_parameter("model.embed_tokens.weight").detach().double()
    assert embed["std"] == pytest.approx(float(weight.std(correction=0)), rel=1e-5)
    assert embed["rank"] == int(torch.linalg.matrix_rank(weight))
    singular = torch.linalg.svdvals(weight)
    assert embed["top_singular_value"] == pytest.approx(float(singular[0]), rel=1e-5)
    assert embed["frobenius_norm"] == pytest.approx(float(weight.norm()), rel=1e-5)
    assert embed["stable_rank"] == pytest.approx(float((singular**2).sum() / singular[0] ** 2), rel=1e-5)


# --- bad input: a 4xx with one line, never a stack trace ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/lens/grid", {"prompt": ""}, 422, "prompt"),
        ("/api/lens/grid", {"prompt": PROMPT, "top_k": 0}, 422, "top_k"),
        ("/api/lens/grid", {"prompt": PROMPT, "typo": 1}, 422, "typo"),
        ("/api/lens/grid", {"prompt": "word " * 3000}, 400, "at most 256"),
        ("/api/lens", {"prompt": PROMPT, "track": [" Nowhere-in-the-vocabulary"] * 20}, 422, "track"),
        ("/api/attention", {"prompt": PROMPT, "layer": 99}, 400, "layer"),
        ("/api/attention", {"prompt": PROMPT}, 422, "layer"),
        ("/api/patch", {"clean": PROMPT, "corrupted": "Rain", "correct": " Paris", "wrong": " Tokyo"}, 400, "length"),
        (
            "/api/patch",
            {"clean": PROMPT, "corrupted": CORRUPTED, "correct": " Paris", "wrong": " Tokyo", "site": "x"},
            422,
            "site",
        ),
        ("/api/patch/cell", {"clean": PROMPT, "corrupted": CORRUPTED, "layer": 0, "position": 40}, 400, "position"),
        ("/api/patch/cell", {"clean": PROMPT, "corrupted": CORRUPTED, "layer": -9, "position": 0}, 400, "layer"),
        ("/api/steer", {"prompt": PROMPT, "direction": "d999", "coefficient": 1}, 404, "direction"),
        ("/api/ablate", {"prompt": PROMPT, "target": " Paris", "component": "neuron"}, 422, "component"),
        ("/api/directions/contrast", {"positive": [], "negative": FORMAL, "layer": 1}, 422, "positive"),
        ("/api/directions/contrast", {"positive": PIRATE, "negative": FORMAL, "layer": 12}, 400, "layer"),
        ("/api/python", {"view": "nonsense"}, 422, "view"),
        ("/api/jobs", {"kind": "patch", "request": {"clean": PROMPT}}, 422, "corrupted"),
        ("/api/jobs", {"kind": "train"}, 422, "kind"),
    ],
)
def test_bad_requests_get_one_line(
    client: TestClient, lm: ms.LanguageModel, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    before = hook_count(lm)
    message = one_line_error(client.post(path, json=body), status)
    assert words in message.lower(), message
    assert hook_count(lm) == before  # a failed request leaves nothing on the model


def test_malformed_bodies_and_unknown_routes(client: TestClient) -> None:
    raw = client.post("/api/lens/grid", content=b"{not json", headers={"content-type": "application/json"})
    assert "json" in one_line_error(raw, 422).lower()
    assert "/api/nothing" in one_line_error(client.get("/api/nothing"), 404)
    assert "GET" in one_line_error(client.get("/api/lens/grid"), 405)
    assert "job-0" in one_line_error(client.get("/api/jobs/job-0"), 404)
    big = client.post("/api/lens/grid", content=b"x" * (2**20 + 1), headers={"content-type": "application/json"})
    assert "KiB" in one_line_error(big, 413)


def test_a_bug_is_a_500_with_one_line() -> None:
    class Broken(Analyzer):
        def run(self, task: Any, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the analyzer broke")

    with TestClient(create_app(Broken(name="toy"), name="toy"), raise_server_exceptions=False) as broken:
        message = one_line_error(broken.post("/api/lens/grid", json={"prompt": PROMPT}), 500)
        assert message == "internal error (RuntimeError): the analyzer broke"


def test_every_reply_carries_the_security_headers(client: TestClient) -> None:
    for response in (client.get("/api/model"), client.get("/api/nothing"), client.post("/api/lens/grid", json={})):
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP


# --- uploads: safetensors or JSON only, size-limited ------------------------------------------------------


def upload(client: TestClient, name: str, data: bytes, **params: Any) -> Any:
    headers = {"content-type": "application/octet-stream"}
    return client.post("/api/directions/upload", params={"name": name, **params}, content=data, headers=headers)


def test_upload_a_saved_direction(client: TestClient, lm: ms.LanguageModel, tmp_path: Path) -> None:
    direction = tasks.directions(lm, PIRATE, FORMAL, layers=[2])[2]
    path = direction.save(tmp_path / "pirate.safetensors")
    info = upload(client, "pirate.safetensors", path.read_bytes()).json()
    assert info["layer"] == 2 and info["name"] == "pirate.safetensors"
    assert info["norm"] == pytest.approx(float(direction.vector.norm()), rel=1e-6)
    as_json = json.dumps({"layer": 1, "vector": [0.5] * lm.arch.d_model}).encode()
    info = upload(client, "half.json", as_json).json()
    assert info["layer"] == 1 and info["norm"] == pytest.approx(0.5 * lm.arch.d_model**0.5)


def test_uploads_that_are_refused(client: TestClient, lm: ms.LanguageModel, tmp_path: Path) -> None:
    pickled = io.BytesIO()
    torch.save({"vector": torch.zeros(lm.arch.d_model)}, pickled)  # a pickle: never to be loaded
    assert "neither safetensors nor json" in one_line_error(upload(client, "d.pt", pickled.getvalue()), 415).lower()
    assert "empty" in one_line_error(upload(client, "d.safetensors", b""), 415)
    assert "MiB limit" in one_line_error(upload(client, "big.safetensors", b"\0" * (64 * 1024 + 1)), 413)
    narrow = Direction(torch.ones(16), 1).save(tmp_path / "narrow.safetensors")
    assert "width 16" in one_line_error(upload(client, "narrow.safetensors", narrow.read_bytes()), 400)
    unnamed = Direction(torch.ones(lm.arch.d_model), 1).save(tmp_path / "plain.safetensors")
    stored = unnamed.read_bytes().replace(b'"direction"', b'"probe____"')  # another kind of mechscope file
    message = one_line_error(upload(client, "mine.safetensors", stored), 400)
    assert "mine.safetensors" in message and "mechscope-upload" not in message
    other = Direction(torch.ones(lm.arch.d_model), 1, model="gpt2").save(tmp_path / "other.safetensors")
    assert "gpt2" in one_line_error(upload(client, "other.safetensors", other.read_bytes()), 400)
    assert upload(client, "other.safetensors", other.read_bytes(), force="true").status_code == 200
    bad_json = json.dumps({"layer": 1}).encode()
    assert "vector" in one_line_error(upload(client, "d.json", bad_json), 400)


# --- the access token -----------------------------------------------------------------------------------


def test_a_token_guards_every_request(analyzer: Analyzer) -> None:
    with TestClient(create_app(analyzer, name="toy", token="s3cret")) as guarded:
        for response in (guarded.get("/"), guarded.get("/api/model"), guarded.post("/api/lens/grid", json={})):
            assert "access token" in one_line_error(response, 401)
        assert guarded.get("/api/model", headers={TOKEN_HEADER: "wrong"}).status_code == 401
        summary = guarded.get("/api/model", headers={TOKEN_HEADER: "s3cret"}).json()
        assert summary["token_required"] is True
        assert guarded.get("/api/model?token=s3cret").status_code == 200  # how EventSource sends it
        assert guarded.get("/static/app.js").status_code == 401
        page = guarded.get("/?token=s3cret")  # the URL the server prints
        assert page.status_code == 200 and "s3cret" not in page.text
        assert guarded.get("/static/app.js").status_code == 200  # the page's own files: by its cookie
        assert guarded.get("/api/model").status_code == 200
    with TestClient(create_app(analyzer, name="toy", token="s3cret")) as fresh:
        assert fresh.get("/static/app.js", cookies={"mechscope_token": "guess"}).status_code == 401


# --- jobs: progress, results, cancellation ----------------------------------------------------------------


def events(client: TestClient, job_id: str) -> list[tuple[str, Any]]:
    """The job's server-sent events, parsed, until the server closes the stream."""
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    parsed = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


def test_a_patching_job_reports_progress_then_its_result(client: TestClient, lm: ms.LanguageModel) -> None:
    request = {"clean": PROMPT, "corrupted": CORRUPTED, "correct": " Paris", "wrong": " Tokyo"}
    job = client.post("/api/jobs", json={"kind": "patch", "request": request}).json()
    assert job["kind"] == "patch" and job["state"] in ("queued", "running", "done")
    stream = events(client, job["id"])
    kinds = [kind for kind, _ in stream]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"}
    assert stream[-1][1] == dumped(tasks.patch(lm, PROMPT, CORRUPTED, correct=" Paris", wrong=" Tokyo"))
    final = stream[-2][1]
    assert final["state"] == "done" and final["done"] == final["total"] == lm.arch.n_layers  # one step per layer
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "done"


def test_a_weights_job_counts_tensors(client: TestClient, lm: ms.LanguageModel) -> None:
    job = client.post("/api/jobs", json={"kind": "weights"}).json()
    stream = events(client, job["id"])
    assert stream[-1][0] == "result" and len(stream[-1][1]) == len(list(lm.model.parameters()))
    assert stream[-2][1]["done"] == stream[-2][1]["total"] == len(list(lm.model.parameters()))


def test_a_failed_job_reports_one_line(client: TestClient) -> None:
    request = {"clean": PROMPT, "corrupted": "Rain", "correct": " Paris", "wrong": " Tokyo"}
    job = client.post("/api/jobs", json={"kind": "patch", "request": request}).json()
    kind, data = events(client, job["id"])[-1]
    assert kind == "error" and "length" in data["error"] and "\n" not in data["error"]


def test_cancelling_a_queued_job_through_the_api(client: TestClient, analyzer: Analyzer, lm: ms.LanguageModel) -> None:
    before = hook_count(lm)
    request = {"prompt": PROMPT, "target": " Paris", "component": "head"}
    with analyzer._lock:  # the model is busy: the job waits its turn
        job = client.post("/api/jobs", json={"kind": "ablate", "request": request}).json()
        assert client.delete(f"/api/jobs/{job['id']}").json()["id"] == job["id"]
    assert events(client, job["id"])[-1][0] == "cancelled"
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    assert hook_count(lm) == before


def test_cancelling_mid_pass_removes_every_hook(lm: ms.LanguageModel) -> None:
    """A job cancelled while it runs stops at its next forward pass, inside a capture and an intervention."""
    jobs = Jobs(Analyzer(lm))
    before = hook_count(lm)
    started, passes = threading.Event(), []
    ids = lm.tokenize([PROMPT])["input_ids"]

    def work(model: ms.LanguageModel) -> Any:
        with torch.no_grad(), model.capture(["resid_post.1"]), model.intervene({"resid_post.2": ms.ops.zero()}):
            for _ in range(10_000):
                model.forward(ids)
                passes.append(1)
                started.set()
        raise AssertionError("the job was never cancelled")

    job = jobs.start("test", work)
    assert started.wait(60)
    assert hook_count(lm) > before  # the capture, the intervention and the job's own check are on the model
    jobs.cancel(job.id)
    assert job.wait(60).state == "cancelled" and job.error is None
    assert len(passes) < 10_000
    assert hook_count(lm) == before
    assert lm.forward(ids).shape[0] == 1  # the model still works afterwards


def test_stop_when_raises_only_once_cancelled(lm: ms.LanguageModel) -> None:
    cancelled = threading.Event()
    ids = lm.tokenize([PROMPT])["input_ids"]
    with stop_when(lm, cancelled):
        lm.forward(ids)
        cancelled.set()
        with pytest.raises(JobCancelled):
            lm.forward(ids)
    lm.forward(ids)  # the check is gone


# --- "copy as Python" reproduces the view -----------------------------------------------------------------


def run_snippet(code: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(code.replace("print(", "(lambda *a: None)("), "<snippet>", "exec"), namespace)
    return namespace["result"]


@pytest.mark.parametrize(
    ("view", "path", "request_body"),
    [
        ("lens", "/api/lens/grid", {"prompt": 'He said "hi"\n<b>', "top_k": 2}),
        ("attention", "/api/attention", {"prompt": PROMPT, "layer": 2}),
        ("patching", "/api/patch", {"clean": PROMPT, "corrupted": CORRUPTED, "correct": " Paris", "wrong": " Tokyo"}),
        ("ablation", "/api/ablate", {"prompt": PROMPT, "target": " Paris", "component": "attn"}),
    ],
)
def test_copy_as_python_reproduces_the_view(
    client: TestClient, view: str, path: str, request_body: dict[str, Any]
) -> None:
    answer = client.post(path, json=request_body).json()
    code = client.post("/api/python", json={"view": view, "request": request_body}).json()["code"]
    assert code.startswith("import mechscope as ms") and "from_pretrained('toy')" in code
    assert dumped(run_snippet(code)) == answer


def test_copy_as_python_rebuilds_the_steering_direction(client: TestClient) -> None:
    info = client.post("/api/directions/contrast", json={"positive": PIRATE, "negative": FORMAL, "layer": 1}).json()
    request = {"prompt": STEER_PROMPT, "direction": info["id"], "coefficient": 3.0, "max_new_tokens": 8}
    answer = client.post("/api/steer", json=request).json()
    code = client.post("/api/python", json={"view": "steering", "request": request}).json()["code"]
    assert "analyzer.directions(" in code
    assert dumped(run_snippet(code)) == answer


def test_requests_are_served_while_a_job_runs(client: TestClient, analyzer: Analyzer) -> None:
    """The event loop stays free while the model is busy: a status request answers before the job ends."""
    with analyzer._lock:
        job = client.post("/api/jobs", json={"kind": "heads"}).json()
        assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "queued"  # answered without the model
    assert events(client, job["id"])[-1][0] == "result"
